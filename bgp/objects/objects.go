// Package objects follows the canopy.io BGPConfiguration and BGPPeer objects and hands the BGP controllers what
// they say (bgp.Objects, bgp.ClusterVIPSettings), checked, with their password Secrets read. A bad object never
// takes effect and never undoes a good one: its last good version stays, and the problem is logged, counted and
// recorded once as a Warning Event on the object.
package objects

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"canopy.io/canopy/api/v1alpha1"
	"canopy.io/canopy/bgp"
	"canopy.io/canopy/bgp/services"
)

// Event reasons on the canopy.io objects.
const (
	ReasonInvalidPeer          = "InvalidBGPPeer"
	ReasonInvalidConfiguration = "InvalidBGPConfiguration"
)

// Options configure a Source.
type Options struct {
	Client dynamic.Interface
	Core   kubernetes.Interface // reads the password Secrets
	// SecretNamespace is the only namespace a passwordSecretRef may name: the agent reads Secrets by name there
	// (RBAC can grant exactly those), never anywhere else.
	SecretNamespace string
	// FlagHoldTime is --hold-time (0: GoBGP's 90 s): a BGPPeer's keepalive given alone must fit in it.
	FlagHoldTime time.Duration
	Recorder     record.EventRecorder // nil: no Events
	// Reporter says whether this node records the Events (one node does, not every node of the cluster).
	Reporter func() bool
	Log      *slog.Logger
	// OnChange is called (from Run's goroutine) whenever what the objects say changes.
	OnChange func()
	// Flags are the agent's own settings, to report where the BGPConfiguration overrides them.
	Flags Flags
	// SecretRefresh is how often the Secrets are read again (default 1 minute).
	SecretRefresh time.Duration
	// Retry is how often absent CRDs or missing rights are looked at again (default 30 s).
	Retry time.Duration
}

// Flags are the agent flags a BGPConfiguration can override.
type Flags struct {
	BGP bgp.Config
	VIP services.Options
}

// conflicts lists where the BGPConfiguration overrides a flag with a different value.
func (f Flags) conflicts(s *settings) []string {
	var out []string
	add := func(field, flag string, obj, flg any) {
		out = append(out, fmt.Sprintf("BGPConfiguration %s %v wins over %s %v", field, obj, flag, flg))
	}
	c := s.cluster
	if c.ClusterASN != nil && *c.ClusterASN != f.BGP.ClusterASN {
		add("clusterASN", "--cluster-asn", *c.ClusterASN, f.BGP.ClusterASN)
	}
	if c.FullMesh != nil && *c.FullMesh != f.BGP.Mesh.FullMesh {
		add("nodeMesh.enabled", "--nodes-full-mesh", *c.FullMesh, f.BGP.Mesh.FullMesh)
	}
	if c.MeshTTLSecurity != nil && *c.MeshTTLSecurity != f.BGP.Mesh.TTLSecurity {
		add("nodeMesh.ttlSecurity", "--node-mesh-ttl-security", *c.MeshTTLSecurity, f.BGP.Mesh.TTLSecurity)
	}
	if c.MeshPassword != nil && f.BGP.Mesh.Password != "" && *c.MeshPassword != f.BGP.Mesh.Password {
		out = append(out, "BGPConfiguration nodeMesh.passwordSecretRef wins over --node-mesh-password-file (the passwords differ)")
	}
	if c.MaxPrefixes != nil && *c.MaxPrefixes != f.BGP.MaxPrefixes {
		add("maxPrefixes", "--max-prefixes", *c.MaxPrefixes, f.BGP.MaxPrefixes)
	}
	v := s.vips
	for _, b := range []struct {
		field, flag string
		obj         *bool
		flg         bool
	}{
		{"advertise.clusterIP", "--advertise-cluster-ip", v.AdvertiseClusterIP, f.VIP.AdvertiseClusterIP},
		{"advertise.externalIP", "--advertise-external-ip", v.AdvertiseExternalIP, f.VIP.AdvertiseExternalIP},
		{"advertise.loadBalancerIP", "--advertise-loadbalancer-ip", v.AdvertiseLoadBalancerIP, f.VIP.AdvertiseLoadBalancerIP},
		{"advertise.serviceCIDR", "--advertise-service-cidr", v.AdvertiseServiceCIDR, f.VIP.AdvertiseServiceCIDR},
	} {
		if b.obj != nil && *b.obj != b.flg {
			add(b.field, b.flag, *b.obj, b.flg)
		}
	}
	if v.AllowedCommunities != nil && v.AllowedCommunities.String() != f.VIP.AllowedCommunities.String() {
		add("allowedServiceCommunities", "--service-communities-allowed", "["+v.AllowedCommunities.String()+"]", "["+f.VIP.AllowedCommunities.String()+"]")
	}
	return out
}

// Source is what the canopy.io objects say, kept current.
type Source struct {
	o Options

	mu        sync.Mutex
	synced    bool
	peers     []*peer   // good ones, oldest first
	settings  *settings // nil: no BGPConfiguration (flags only)
	conflicts []string  // where the BGPConfiguration overrides a flag

	// only Run's goroutine uses these
	goodPeers  map[string]*peer // last good version of each BGPPeer
	goodConfig *settings
	reported   map[string]string // object → last reported problem
	secrets    map[v1alpha1.SecretKeyReference]secretValue
	peerInf    cache.SharedIndexInformer
	confInf    cache.SharedIndexInformer
	kick       chan struct{}
}

type secretValue struct {
	password string
	err      error
	read     time.Time
}

// New returns a Source; Run starts it.
func New(o Options) *Source {
	if o.SecretRefresh <= 0 {
		o.SecretRefresh = time.Minute
	}
	if o.Retry <= 0 {
		o.Retry = 30 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return &Source{o: o, goodPeers: map[string]*peer{}, reported: map[string]string{},
		secrets: map[v1alpha1.SecretKeyReference]secretValue{}, kick: make(chan struct{}, 1)}
}

// HasSynced reports whether the objects have been read, or found absent (CRDs not installed, or no right to
// read them: then the flags and annotations alone apply).
func (s *Source) HasSynced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// Cluster implements bgp.Objects.
func (s *Source) Cluster() bgp.ClusterSettings {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.settings == nil {
		return bgp.ClusterSettings{}
	}
	return s.settings.cluster
}

// VIPs returns the BGPConfiguration's Service VIP settings.
func (s *Source) VIPs() bgp.ClusterVIPSettings {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.settings == nil {
		return bgp.ClusterVIPSettings{}
	}
	return s.settings.vips
}

// NodeStatus returns whether nodes report BGPNodeStatus, at most how often, and the BGPConfiguration's
// generation.
func (s *Source) NodeStatus() (enabled bool, minInterval time.Duration, generation int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.settings == nil {
		return true, 5 * time.Second, 0
	}
	return s.settings.statusOn, s.settings.statusPeriod, s.settings.generation
}

// Conflicts returns where the BGPConfiguration overrides a flag with another value.
func (s *Source) Conflicts() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.conflicts)
}

// PeersFor implements bgp.Objects: the BGPPeers that select node, the oldest last (so it wins an address two of
// them name, and the other is reported as a conflict).
func (s *Source) PeersFor(node *corev1.Node) []bgp.PeerConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []bgp.PeerConfig
	for i := len(s.peers) - 1; i >= 0; i-- {
		if p := s.peers[i]; p.selects(node.Name, node.Labels) {
			out = append(out, p.cfg)
		}
	}
	return out
}

// Run follows the objects until ctx ends.
func (s *Source) Run(ctx context.Context) {
	for !s.start(ctx) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.o.Retry):
		}
	}
	tick := time.NewTicker(s.o.SecretRefresh)
	defer tick.Stop()
	for {
		s.rebuild(ctx, false)
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-tick.C:
			s.rebuild(ctx, true)
		}
	}
}

func (s *Source) trigger() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// start looks whether the CRDs are there and readable; if so it starts their informers and waits for them.
// It returns false to be called again later (CRDs absent, no rights); meanwhile the Source counts as synced
// with nothing in it, so BGP runs on the flags and annotations.
func (s *Source) start(ctx context.Context) bool {
	for _, res := range []struct {
		gvr  any
		list func() error
	}{
		{v1alpha1.BGPPeersResource, func() error {
			_, err := s.o.Client.Resource(v1alpha1.BGPPeersResource).List(ctx, metav1.ListOptions{Limit: 1})
			return err
		}},
		{v1alpha1.BGPConfigurationsResource, func() error {
			_, err := s.o.Client.Resource(v1alpha1.BGPConfigurationsResource).List(ctx, metav1.ListOptions{Limit: 1})
			return err
		}},
	} {
		err := res.list()
		switch {
		case err == nil:
			continue
		case apierrors.IsNotFound(err):
			s.absent(fmt.Sprintf("the canopy.io CRDs are not installed (%v): BGP is configured by flags and annotations only; apply manifests/crds to use BGPPeer and BGPConfiguration", res.gvr))
		case apierrors.IsForbidden(err):
			s.absent(fmt.Sprintf("no right to read %v (%v): BGPPeer and BGPConfiguration are ignored; apply manifests/rbac.yaml", res.gvr, err))
		default:
			s.o.Log.Warn("canopy.io objects: cannot list them yet", "err", err)
			if ctx.Err() == nil {
				time.Sleep(2 * time.Second)
			}
		}
		return false
	}
	f := dynamicinformer.NewDynamicSharedInformerFactory(s.o.Client, 0)
	s.peerInf = f.ForResource(v1alpha1.BGPPeersResource).Informer()
	s.confInf = f.ForResource(v1alpha1.BGPConfigurationsResource).Informer()
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.trigger() },
		UpdateFunc: func(any, any) { s.trigger() },
		DeleteFunc: func(any) { s.trigger() },
	}
	_, _ = s.peerInf.AddEventHandler(h)
	_, _ = s.confInf.AddEventHandler(h)
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), s.peerInf.HasSynced, s.confInf.HasSynced) {
		return false
	}
	s.o.Log.Info("following the canopy.io BGPPeer and BGPConfiguration objects")
	return true
}

func (s *Source) absent(msg string) {
	if s.reported["\x00absent"] != msg {
		s.o.Log.Info(msg)
		s.reported["\x00absent"] = msg
	}
	s.mu.Lock()
	s.synced = true
	s.mu.Unlock()
}

// lookup reads a password Secret (cached; refresh reads every one again).
func (s *Source) lookup(ctx context.Context, refresh bool, seen map[v1alpha1.SecretKeyReference]bool) secretLookup {
	return func(ref *v1alpha1.SecretKeyReference) (string, error) {
		r := *ref
		if r.Key == "" {
			r.Key = "password"
		}
		seen[r] = true
		if r.Namespace != s.o.SecretNamespace {
			return "", fmt.Errorf("Secret %s/%s: the agent reads password Secrets only in namespace %q (--bgp-secret-namespace)", r.Namespace, r.Name, s.o.SecretNamespace)
		}
		if v, ok := s.secrets[r]; ok && !refresh && v.err == nil {
			return v.password, nil
		}
		v := secretValue{read: time.Now()}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		sec, err := s.o.Core.CoreV1().Secrets(r.Namespace).Get(cctx, r.Name, metav1.GetOptions{})
		cancel()
		switch {
		case err != nil:
			v.err = fmt.Errorf("Secret %s/%s: %v", r.Namespace, r.Name, err)
		case sec.Data[r.Key] == nil:
			v.err = fmt.Errorf("Secret %s/%s has no key %q", r.Namespace, r.Name, r.Key)
		default:
			pw := strings.TrimRight(string(sec.Data[r.Key]), "\r\n")
			switch {
			case pw == "":
				v.err = fmt.Errorf("Secret %s/%s key %q is empty", r.Namespace, r.Name, r.Key)
			case len(pw) > maxPasswordLen:
				v.err = fmt.Errorf("Secret %s/%s key %q: a TCP MD5 password is at most %d bytes", r.Namespace, r.Name, r.Key, maxPasswordLen)
			default:
				v.password = pw
			}
		}
		s.secrets[r] = v
		return v.password, v.err
	}
}

// rebuild reads every object again and publishes the result if it changed.
func (s *Source) rebuild(ctx context.Context, refreshSecrets bool) {
	seen := map[v1alpha1.SecretKeyReference]bool{}
	lookup := s.lookup(ctx, refreshSecrets, seen)
	present := map[string]bool{}
	for _, o := range s.peerInf.GetStore().List() {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		key := "BGPPeer/" + u.GetName()
		present[key] = true
		obj, err := v1alpha1.PeerFromUnstructured(u)
		var p *peer
		if err == nil {
			p, err = parsePeer(obj, lookup, s.o.FlagHoldTime)
		}
		if err != nil {
			s.problem(key, u, ReasonInvalidPeer, err, s.goodPeers[u.GetName()] != nil)
			continue
		}
		s.ok(key)
		s.goodPeers[u.GetName()] = p
	}
	for name := range s.goodPeers {
		if !present["BGPPeer/"+name] {
			delete(s.goodPeers, name)
		}
	}
	var conf *settings
	for _, o := range s.confInf.GetStore().List() {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		key := "BGPConfiguration/" + u.GetName()
		present[key] = true
		if u.GetName() != v1alpha1.ConfigurationName {
			s.problem(key, u, ReasonInvalidConfiguration, fmt.Errorf("only the BGPConfiguration named %q is read", v1alpha1.ConfigurationName), false)
			continue
		}
		obj, err := v1alpha1.ConfigurationFromUnstructured(u)
		if err == nil {
			conf, err = parseConfiguration(obj, lookup)
		}
		if err != nil {
			conf = s.goodConfig
			s.problem(key, u, ReasonInvalidConfiguration, err, conf != nil)
			continue
		}
		s.ok(key)
		s.goodConfig = conf
	}
	if !present["BGPConfiguration/"+v1alpha1.ConfigurationName] {
		conf, s.goodConfig = nil, nil
	}
	for k := range s.reported {
		if !present[k] && !strings.HasPrefix(k, "\x00") {
			delete(s.reported, k)
		}
	}
	for r := range s.secrets {
		if !seen[r] {
			delete(s.secrets, r)
		}
	}
	peers := make([]*peer, 0, len(s.goodPeers))
	for _, p := range s.goodPeers {
		peers = append(peers, p)
	}
	slices.SortFunc(peers, func(a, b *peer) int {
		if c := a.created.Compare(b.created); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	var conflicts []string
	if conf != nil {
		conflicts = s.o.Flags.conflicts(conf)
	}
	s.reportConflicts(conflicts)
	s.mu.Lock()
	first := !s.synced
	changed := first || !reflect.DeepEqual(peers, s.peers) || !reflect.DeepEqual(conf, s.settings)
	s.peers, s.settings, s.conflicts = peers, conf, conflicts
	s.mu.Unlock()
	if changed && s.o.OnChange != nil {
		s.o.OnChange()
	}
	if first {
		// Synced only once the consumers have heard: their first sync already has the objects' settings.
		s.mu.Lock()
		s.synced = true
		s.mu.Unlock()
	}
}

func (s *Source) ok(key string) {
	if _, bad := s.reported[key]; bad {
		s.o.Log.Info("canopy.io object is valid again", "object", key)
		delete(s.reported, key)
	}
}

// problem logs, counts and records (once per distinct text) why an object is not used.
func (s *Source) problem(key string, u *unstructured.Unstructured, reason string, err error, keptOld bool) {
	msg := fmt.Sprintf("%s is refused: %v", key, err)
	if keptOld {
		msg += "; its last good version stays in effect"
	}
	if s.reported[key] == msg {
		return
	}
	s.reported[key] = msg
	bgp.CountInvalidInput(strings.ToLower(strings.SplitN(key, "/", 2)[0]))
	s.o.Log.Warn(msg, "reason", reason)
	if s.o.Recorder != nil && (s.o.Reporter == nil || s.o.Reporter()) {
		ref := &corev1.ObjectReference{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: u.GetKind(), Name: u.GetName(),
			UID: u.GetUID(), ResourceVersion: u.GetResourceVersion()}
		s.o.Recorder.Event(ref, corev1.EventTypeWarning, reason, msg)
	}
}

// ReasonConfigConflict is the Event reason for a BGPConfiguration field that overrides a flag.
const ReasonConfigConflict = "BGPConfigConflict"

// reportConflicts logs (every node) and records on the BGPConfiguration (one node) where it overrides a flag,
// when that changes.
func (s *Source) reportConflicts(conflicts []string) {
	all := strings.Join(conflicts, "; ")
	if s.reported["\x00conflicts"] == all {
		return
	}
	s.reported["\x00conflicts"] = all
	for _, c := range conflicts {
		s.o.Log.Warn(c, "reason", ReasonConfigConflict)
		if s.o.Recorder != nil && (s.o.Reporter == nil || s.o.Reporter()) {
			ref := &corev1.ObjectReference{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "BGPConfiguration",
				Name: v1alpha1.ConfigurationName}
			s.o.Recorder.Event(ref, corev1.EventTypeWarning, ReasonConfigConflict, c)
		}
	}
}
