package ipvs

import (
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"canopy.io/canopy/internal/ipt"
	"canopy.io/canopy/policy"
)

// IPVS forwards a pod's connection to a service from LOCAL_OUT, so the NetworkPolicy data path meets it in
// OUTPUT rather than FORWARD: the backend's ingress rules and the client's egress rules must both apply there.
func TestVMNetworkPolicyOnIPVSTraffic(t *testing.T) {
	n := newNode(t)
	n.sync(n.service(n.ready(0)))
	if name, _ := ask(t, n.client, clusterIP+":80"); name != "b1" {
		t.Fatalf("answered by %s", name)
	}
	var fw *policy.Firewall
	if err := n.node.Do(func() error {
		h, err := ipt.Open()
		if err != nil {
			return err
		}
		fw = policy.NewHost(h, slog.Default())
		return fw.Start(policy.Options{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}})
	}); err != nil {
		t.Fatal(err)
	}
	pods := []policy.LocalPod{{Key: "default/client", IP: netip.MustParseAddr("10.244.0.2")},
		{Key: "default/b1", IP: netip.MustParseAddr(n.backends[0])}, {Key: "default/b2", IP: netip.MustParseAddr(n.backends[1])}}
	sync := func(fws map[string]*policy.PodFirewall) {
		t.Helper()
		if err := n.node.Do(func() error {
			_, err := fw.Sync(policy.Build(fws, pods, policy.Options{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}))
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	reach := func() error {
		c, err := n.client.Dial("tcp", clusterIP+":80")
		if err == nil {
			c.Close()
		}
		return err
	}
	tryOnce := func() error {
		var c net.Conn
		err := n.client.Do(func() (err error) {
			c, err = net.DialTimeout("tcp", clusterIP+":80", 700*time.Millisecond)
			return err
		})
		if err == nil {
			c.Close()
		}
		return err
	}
	client := policy.Peer{Selector: "client", PodIPs: []netip.Addr{netip.MustParseAddr("10.244.0.2")}}
	tcp8080 := []policy.PortRule{{Protocol: corev1.ProtocolTCP, Port: 8080, EndPort: 8080}}
	sync(map[string]*policy.PodFirewall{"default/client": {}, "default/b2": {},
		"default/b1": {IngressIsolated: true, Ingress: []policy.Rule{{Peers: []policy.Peer{client}, Ports: tcp8080, Policy: "default/p"}}}})
	if err := reach(); err != nil {
		t.Errorf("b1 admits the client on 8080, but the service is unreachable: %v", err)
	}
	sync(map[string]*policy.PodFirewall{"default/client": {}, "default/b2": {}, "default/b1": {IngressIsolated: true}})
	if err := tryOnce(); err == nil {
		t.Errorf("b1 denies all ingress, yet the client reached it through IPVS (%v)", err)
	}
	n.sync(n.service(n.ready(1)))
	sync(map[string]*policy.PodFirewall{"default/b1": {}, "default/b2": {}, "default/client": {EgressIsolated: true}})
	if err := tryOnce(); err == nil {
		t.Error("the client's egress is denied, yet it reached b2 through IPVS")
	}
	sync(map[string]*policy.PodFirewall{"default/b1": {}, "default/b2": {}, "default/client": {}})
	if err := reach(); err != nil {
		t.Errorf("no policy: %v", err)
	}
}
