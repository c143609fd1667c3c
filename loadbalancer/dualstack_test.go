package loadbalancer

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
)

func withFamilies(fs ...corev1.IPFamily) svcOpt {
	return func(s *corev1.Service) { s.Spec.IPFamilies = fs }
}

var (
	v4 = corev1.IPv4Protocol
	v6 = corev1.IPv6Protocol
)

// TestDualStackAllocation: with ranges of both families a Service gets one address of each of its
// spec.ipFamilies, in that order; an IPv6-only Service an IPv6 one; a request may name one address per family;
// a Service that drops a family gives that address back (to a Service waiting for one), one that adds a family
// gets an address of it and keeps the other.
func TestDualStackAllocation(t *testing.T) {
	kube := newKube()
	r := start(t, kube, testConfig("n1", "10.0.0.1-10.0.0.5", "fd00:200::/126")) // fd00:200::1-3
	waitLeading(t, r)

	create(t, kube, svc("dual", withFamilies(v4, v6)))
	waitIP(t, kube, "dual", "10.0.0.1,fd00:200::1")
	create(t, kube, svc("v6only", withFamilies(v6)))
	waitIP(t, kube, "v6only", "fd00:200::2")
	create(t, kube, svc("v6first", withFamilies(v6, v4)))
	waitIP(t, kube, "v6first", "fd00:200::3,10.0.0.2")
	if got := testutil.ToFloat64(poolSize); got != 8 {
		t.Errorf("pool size gauge %v, want 8 (5 IPv4 + 3 IPv6)", got)
	}

	// The IPv6 range is exhausted: an IPv6 request outside it leaves the IPv4 side working.
	create(t, kube, svc("ann", withFamilies(v4, v6), annotated("10.0.0.4, fd00:200::9")))
	waitIP(t, kube, "ann", "10.0.0.4")
	create(t, kube, svc("two6", withFamilies(v4, v6), annotated("fd00:200::1,fd00:200::2")))
	create(t, kube, svc("late", withFamilies(v6)))
	eventually(t, "warnings", func() bool {
		return len(r.rec.find("default/ann", ReasonUnavailable)) == 1 && len(r.rec.find("default/two6", ReasonInvalidRequest)) == 1 &&
			len(r.rec.find("default/late", ReasonExhausted)) == 1
	})
	if e := r.rec.find("default/ann", ReasonUnavailable)[0]; !strings.Contains(e.msg, "fd00:200::9") || !strings.Contains(e.msg, "not in the configured") {
		t.Errorf("event %+v", e)
	}
	if e := r.rec.find("default/two6", ReasonInvalidRequest)[0]; !strings.Contains(e.msg, "more than one IPv6 address") {
		t.Errorf("event %+v", e)
	}

	// dual becomes IPv4-only: its IPv6 address goes to the Service waiting for one.
	update(t, kube, "dual", func(s *corev1.Service) { s.Spec.IPFamilies = []corev1.IPFamily{v4} })
	waitIP(t, kube, "dual", "10.0.0.1")
	waitIP(t, kube, "late", "fd00:200::1")
	// v6only becomes dual-stack (IPv6 first): it keeps its IPv6 address and gets an IPv4 one.
	update(t, kube, "v6only", func(s *corev1.Service) { s.Spec.IPFamilies = []corev1.IPFamily{v6, v4} })
	waitIP(t, kube, "v6only", "fd00:200::2,10.0.0.3")
	settle()
	if got := testutil.ToFloat64(allocatedIPs); got != 7 {
		t.Errorf("allocated gauge %v, want 7", got)
	}

	// A new term (another leader, a restart) rebuilds both families from the status and moves nothing.
	factory := informers.NewSharedInformerFactory(kube, 0)
	a, err := New(testConfig("n2", "10.0.0.1-10.0.0.5", "fd00:200::/126"), kube, factory, &recorder{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	tm := newTerm(a)
	if err := tm.rebuild(context.Background()); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"dual": "10.0.0.1", "v6only": "10.0.0.3 fd00:200::2", "v6first": "10.0.0.2 fd00:200::3",
		"ann": "10.0.0.4", "late": "fd00:200::1"} {
		var got []string
		for _, f := range []corev1.IPFamily{v4, v6} {
			if ip, ok := tm.pools[f].Lookup("default/" + name); ok {
				got = append(got, ip.String())
			}
		}
		if strings.Join(got, " ") != want {
			t.Errorf("rebuilt %s: %v, want %s", name, got, want)
		}
	}
}

// TestRequireDualStackOneRange: with ranges of one family only, a RequireDualStack Service gets that family's
// address and a Warning (once, not per sync) naming the family it misses; a PreferDualStack one gets the address
// and no Warning.
func TestRequireDualStackOneRange(t *testing.T) {
	kube := newKube()
	r := start(t, kube, testConfig("n1", "10.0.0.1-10.0.0.5"))
	waitLeading(t, r)
	require, prefer := corev1.IPFamilyPolicyRequireDualStack, corev1.IPFamilyPolicyPreferDualStack
	// One after the other: the allocator may see two Services created together in either order (a term's first
	// list is in the API's order, the fake clientset's is random), and the addresses go lowest free first.
	create(t, kube, svc("req", withFamilies(v4, v6), func(s *corev1.Service) { s.Spec.IPFamilyPolicy = &require }))
	waitIP(t, kube, "req", "10.0.0.1")
	create(t, kube, svc("pref", withFamilies(v4, v6), func(s *corev1.Service) { s.Spec.IPFamilyPolicy = &prefer }))
	waitIP(t, kube, "pref", "10.0.0.2")
	eventually(t, "a warning for the RequireDualStack Service", func() bool {
		return len(r.rec.find("default/req", ReasonUnavailable)) == 1
	})
	if e := r.rec.find("default/req", ReasonUnavailable)[0]; !strings.Contains(e.msg, "requires dual stack") || !strings.Contains(e.msg, "IPv6") {
		t.Errorf("event %+v, want one naming the missing IPv6 range", e)
	}
	update(t, kube, "req", func(s *corev1.Service) { s.Labels = map[string]string{"touched": "1"} }) // another sync
	settle()
	if n := len(r.rec.find("default/req", ReasonUnavailable)); n != 1 {
		t.Errorf("%d warnings for the RequireDualStack Service after another sync, want 1", n)
	}
	if ev := r.rec.find("default/pref", ReasonUnavailable); len(ev) != 0 {
		t.Errorf("PreferDualStack Service warned: %+v", ev)
	}
}
