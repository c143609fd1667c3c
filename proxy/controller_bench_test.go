package proxy

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"canopy.io/canopy/internal/model"
)

// signalBackend tells when a Sync programmed a key with a given number of cluster endpoints.
type signalBackend struct {
	recordingBackend
	mu2   sync.Mutex
	key   string
	eps   int
	match chan time.Time
}

func (s *signalBackend) expect(key string, eps int) chan time.Time {
	s.mu2.Lock()
	defer s.mu2.Unlock()
	s.key, s.eps, s.match = key, eps, make(chan time.Time, 1)
	return s.match
}

func (s *signalBackend) Sync(desired map[string]*model.ServicePort, changed []string) error {
	now := time.Now()
	err := s.recordingBackend.Sync(desired, changed)
	s.mu2.Lock()
	defer s.mu2.Unlock()
	if s.match != nil && slices.Contains(changed, s.key) {
		if p := desired[s.key]; p != nil && len(p.ClusterEndpoints) == s.eps {
			s.match <- now
			s.match = nil
		}
	}
	return err
}

// BenchmarkControllerEventToSync measures the Go side between the API and the back end at 10,000 Services x 2
// endpoints: from the API write (a fake clientset: its watch delivers in-process) through the informers, the
// Service model's tracker and the proxy controller, to the back end's Sync being called — for +1 Service (the
// Service and its EndpointSlice written back to back, until a Sync has the port with both endpoints) and for
// one endpoint change (median of 9 each), and how many back-end Syncs one +1 made (the proxy coalesces
// changes arriving within SyncQuiet of each other, waiting at most SyncHold: one, where it made two before).
// This is the whole cost the kernel's time adds to.
//
//	go test -run '^$' -bench BenchmarkControllerEventToSync -benchtime 1x ./proxy/
func BenchmarkControllerEventToSync(b *testing.B) {
	const n, reps = 10000, 9
	var add1, epchange []time.Duration
	var add1Syncs []int
	for b.Loop() {
		b.StopTimer()
		kube := fake.NewSimpleClientset()
		ctx, cancel := context.WithCancel(context.Background())
		for i := range n {
			ip := fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)
			if _, err := kube.CoreV1().Services("default").Create(ctx, testService("default", fmt.Sprintf("s%d", i), ip), metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			if _, err := kube.DiscoveryV1().EndpointSlices("default").Create(ctx, testSlice("default", fmt.Sprintf("s%d", i), "10.244.1.2", "10.244.2.2"), metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
		}
		be := &signalBackend{}
		startController(ctx, kube, be, nil)
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(10 * time.Millisecond) {
			if _, have := be.last(); have == n {
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("timed out loading")
			}
		}
		await := func(ch chan time.Time, t0 time.Time) time.Duration {
			select {
			case t := <-ch:
				return t.Sub(t0)
			case <-time.After(30 * time.Second):
				b.Fatal("timed out")
			}
			return 0
		}
		for i := range reps {
			name := fmt.Sprintf("new%d", i)
			ch := be.expect("other/"+name+":http/TCP", 2)
			be.mu.Lock()
			syncs0 := len(be.syncs)
			be.mu.Unlock()
			t0 := time.Now()
			if _, err := kube.CoreV1().Services("other").Create(ctx, testService("other", name, fmt.Sprintf("10.96.200.%d", i+1)), metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			if _, err := kube.DiscoveryV1().EndpointSlices("other").Create(ctx, testSlice("other", name, "10.244.1.9", "10.244.2.9"), metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			add1 = append(add1, await(ch, t0))
			time.Sleep(2 * SyncHold) // a later Sync of the same +1 would show now
			be.mu.Lock()
			add1Syncs = append(add1Syncs, len(be.syncs)-syncs0)
			be.mu.Unlock()

			sl, err := kube.DiscoveryV1().EndpointSlices("default").Get(ctx, fmt.Sprintf("s%d-abc", 100+i), metav1.GetOptions{})
			if err != nil {
				b.Fatal(err)
			}
			sl.Endpoints = sl.Endpoints[:1]
			ch = be.expect(fmt.Sprintf("default/s%d:http/TCP", 100+i), 1)
			t0 = time.Now()
			if _, err := kube.DiscoveryV1().EndpointSlices("default").Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
				b.Fatal(err)
			}
			epchange = append(epchange, await(ch, t0))
		}
		cancel()
		b.StartTimer()
	}
	med := func(ds []time.Duration) time.Duration { ds = slices.Clone(ds); slices.Sort(ds); return ds[len(ds)/2] }
	slices.Sort(add1Syncs)
	b.ReportMetric(float64(add1Syncs[len(add1Syncs)/2]), "add1-backend-syncs")
	b.ReportMetric(float64(med(add1))/1e6, "add1-event-to-sync-ms")
	b.ReportMetric(float64(med(epchange))/1e6, "epchange-event-to-sync-ms")
	b.Logf("%d Services: API write to the back end's Sync: +1 %v, endpoint change %v (medians of %d)", n, med(add1), med(epchange), reps)
}
