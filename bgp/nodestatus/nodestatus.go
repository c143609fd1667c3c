// Package nodestatus writes this node's BGPNodeStatus: it turns the BGP manager's bgp.Status into the object's
// status (FromStatus) and keeps the object, named after the node and owned by its Node, in line with it (Writer),
// through the status subresource, only when the state changed and at most once per minimum interval.
//
// The Writer polls its source every second instead of being told of changes: asking the manager is cheap, and a
// poll cannot miss a change that a notification path forgot. Changes inside the minimum interval are written
// together when it ends. The time of the write (status.updated) and the times at which conditions last changed
// take no part in deciding whether the state changed, so an idle node writes nothing.
package nodestatus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"canopy.io/canopy/api/v1alpha1"
	"canopy.io/canopy/bgp"
	"canopy.io/canopy/bgp/bfd"
)

const (
	// maxSessions is the CRD's limit on status.sessions.
	maxSessions = 5000
	// maxLastError is the CRD's limit on sessions[].lastError.
	maxLastError = 1024
	// conditionTruncated is set when the node has more sessions than the object can list.
	conditionTruncated = "SessionsTruncated"
	// labelNode names the node on the object, for label selectors.
	labelNode = "canopy.io/node"

	defaultMinInterval = 5 * time.Second
	defaultTick        = time.Second
	callTimeout        = 10 * time.Second
	maxBackoff         = 30 * time.Second
	crdRetry           = 60 * time.Second
)

var nodesResource = schema.GroupVersionResource{Version: "v1", Resource: "nodes"}

var writes = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "canopy_bgp_node_status_writes_total",
	Help: "Writes of this node's BGPNodeStatus, by result: ok, error (the write failed; retried with back-off), conflict (the object changed under the write; retried at once with a fresh read).",
}, []string{"result"})

func init() {
	for _, r := range []string{"ok", "error", "conflict"} {
		writes.WithLabelValues(r)
	}
}

// Collectors returns the package's metrics.
func Collectors() []prometheus.Collector { return []prometheus.Collector{writes} }

var sessionStates = map[string]v1alpha1.SessionState{
	bgp.StateIdle.String():        v1alpha1.SessionIdle,
	bgp.StateConnect.String():     v1alpha1.SessionConnect,
	bgp.StateActive.String():      v1alpha1.SessionActive,
	bgp.StateOpenSent.String():    v1alpha1.SessionOpenSent,
	bgp.StateOpenConfirm.String(): v1alpha1.SessionOpenConfirm,
	bgp.StateEstablished.String(): v1alpha1.SessionEstablished,
}

var bfdStates = map[string]v1alpha1.BFDState{
	bfd.StateAdminDown.String(): v1alpha1.BFDAdminDown,
	bfd.StateDown.String():      v1alpha1.BFDDown,
	bfd.StateInit.String():      v1alpha1.BFDInit,
	bfd.StateUp.String():        v1alpha1.BFDUp,
}

// FromStatus converts the BGP manager's status into a BGPNodeStatus status: one session per peer address (the
// first one wins should an address repeat), sorted by address, with the counts and summary the CRD checks. A
// state the CRD does not know is Idle; a BFD state it does not know is left out; a zero Since is unset and the
// others are cut to whole seconds (what the object keeps). With more than 5000 sessions only the first 5000 by
// address are listed and counted, and the condition SessionsTruncated says how many there are. Updated (and a
// condition's lastTransitionTime) is the time of the call; the Writer sets its own.
func FromStatus(st bgp.Status) v1alpha1.NodeBGPState {
	var out v1alpha1.NodeBGPState
	out.ASN = int64(st.ASN)
	if st.RouterID.IsValid() {
		out.RouterID = st.RouterID.String()
	}
	sessions := make([]v1alpha1.BGPSession, 0, len(st.Peers))
	seen := make(map[string]bool, len(st.Peers))
	for _, p := range st.Peers {
		s := session(p)
		if seen[s.PeerAddress] {
			continue
		}
		seen[s.PeerAddress] = true
		sessions = append(sessions, s)
	}
	now := metav1.Now()
	out.SetSessions(sessions, now)
	if total := len(out.Sessions); total > maxSessions {
		out.SetSessions(out.Sessions[:maxSessions], now) // sorted by address: the same 5000 every time
		out.Conditions = []metav1.Condition{{
			Type:               conditionTruncated,
			Status:             metav1.ConditionTrue,
			Reason:             "TooManySessions",
			Message:            fmt.Sprintf("the node has %d BGP sessions; only the first %d by peer address are listed and counted", total, maxSessions),
			LastTransitionTime: now,
		}}
	}
	return out
}

func session(p bgp.PeerStatus) v1alpha1.BGPSession {
	s := v1alpha1.BGPSession{
		PeerAddress:        p.Address.String(),
		PeerASN:            int64(p.ASN),
		Source:             p.Name,
		State:              v1alpha1.SessionIdle,
		PrefixesReceived:   clampInt64(p.Received),
		PrefixesAccepted:   clampInt64(p.Accepted),
		PrefixesAdvertised: clampInt64(p.Advertised),
		LastError:          truncate(p.LastError, maxLastError),
		BFDState:           bfdStates[p.BFD],
	}
	if p.Kind == bgp.PeerKindNode {
		s.Source = v1alpha1.SourceMesh
	}
	if x, ok := sessionStates[p.State]; ok {
		s.State = x
	}
	if !p.Since.IsZero() {
		t := metav1.NewTime(p.Since.Truncate(time.Second))
		s.Since = &t
	}
	return s
}

func clampInt64(v uint64) int64 {
	if v > 1<<63-1 {
		return 1<<63 - 1
	}
	return int64(v)
}

// truncate cuts s to at most n bytes (so at most n characters) on a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Writer keeps this node's BGPNodeStatus in line with what its source reports (see Run).
type Writer struct {
	client dynamic.Interface
	node   string
	source func(context.Context) v1alpha1.NodeBGPState
	log    *slog.Logger

	// Run's timings; tests shorten them.
	tick       time.Duration // how often Run asks the source
	maxBackoff time.Duration // longest wait after a failed write
	crdRetry   time.Duration // wait while the CRD is not installed

	mu          sync.Mutex
	enabled     bool
	minInterval time.Duration
	generation  int64
	kick        chan struct{} // wakes Run when the options change

	// Run's own state.
	last       *v1alpha1.NodeBGPState // the status last written; nil: none since the start or a delete
	lastWrite  time.Time
	retryAt    time.Time // no API call before (back-off, CRD missing)
	backoff    time.Duration
	wasEnabled bool
	deleted    bool   // the object was deleted since the writer was disabled
	crdMissing bool   // the last write found no BGPNodeStatus resource
	lastErr    string // the last error logged
	nodeUID    types.UID
}

// New returns a writer of the BGPNodeStatus named nodeName through client, with the state source returns (the
// writer sets its observedGeneration and updated). It is enabled, with a minimum interval of 5 s, until
// SetOptions says otherwise. A nil log is slog.Default().
func New(client dynamic.Interface, nodeName string, source func(context.Context) v1alpha1.NodeBGPState, log *slog.Logger) *Writer {
	if log == nil {
		log = slog.Default()
	}
	return &Writer{
		client: client, node: nodeName, source: source, log: log,
		tick: defaultTick, maxBackoff: maxBackoff, crdRetry: crdRetry,
		enabled: true, minInterval: defaultMinInterval, kick: make(chan struct{}, 1),
		wasEnabled: true,
	}
}

// SetOptions sets whether the writer writes, the least time between two writes (0 or less: 5 s) and the
// metadata.generation of the BGPConfiguration the state is reached with (status.observedGeneration). It may be
// called from any goroutine at any time; Run acts on it at once.
func (w *Writer) SetOptions(enabled bool, minInterval time.Duration, observedGeneration int64) {
	if minInterval <= 0 {
		minInterval = defaultMinInterval
	}
	w.mu.Lock()
	w.enabled, w.minInterval, w.generation = enabled, minInterval, observedGeneration
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *Writer) options() (bool, time.Duration, int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.enabled, w.minInterval, w.generation
}

// Run writes the status until ctx ends: it asks the source every second and writes when the state differs from
// the one last written, at once the first time, then at most once per minimum interval (a change inside the
// interval is written when it ends). A failed write is retried with back-off up to 30 s, each error text logged
// once; without the CRD it logs once and tries again every minute. Disabled, it deletes the object once and
// waits to be enabled again. It leaves the object in place when ctx ends.
func (w *Writer) Run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-w.kick:
		}
		timer.Reset(w.step(ctx))
	}
}

// step does what is due and returns how long to wait before the next step.
func (w *Writer) step(ctx context.Context) time.Duration {
	enabled, minInterval, generation := w.options()
	if enabled != w.wasEnabled {
		w.wasEnabled, w.retryAt, w.backoff = enabled, time.Time{}, 0
	}
	now := time.Now()
	if now.Before(w.retryAt) {
		return w.retryAt.Sub(now)
	}
	if !enabled {
		w.last = nil
		if w.deleted {
			return w.tick
		}
		if err := w.delete(ctx); err != nil {
			return w.failed(err)
		}
		w.deleted = true
		w.succeeded()
		return w.tick
	}
	w.deleted = false

	st := w.observe(ctx, generation)
	if w.last != nil {
		if same(*w.last, st) {
			return w.tick
		}
		if due := w.lastWrite.Add(minInterval); now.Before(due) {
			return min(due.Sub(now), w.tick)
		}
	}
	err := w.write(ctx, &st)
	switch {
	case err == nil:
		writes.WithLabelValues("ok").Inc()
		w.last, w.lastWrite = &st, time.Now()
		if w.crdMissing {
			w.crdMissing = false
			w.log.Info("BGPNodeStatus CRD installed; reporting", "node", w.node)
		}
		w.succeeded()
		return w.tick
	case errors.Is(err, errCRDMissing):
		writes.WithLabelValues("error").Inc()
		if !w.crdMissing {
			w.crdMissing = true
			w.log.Info("BGPNodeStatus CRD not installed; not reporting", "node", w.node, "retry", w.crdRetry)
		}
		w.retryAt = time.Now().Add(w.crdRetry)
		return w.crdRetry
	default:
		writes.WithLabelValues("error").Inc()
		return w.failed(err)
	}
}

// observe asks the source for the state, with the writer's observedGeneration, and the lastTransitionTime of
// each condition whose type and status have not changed since the last write (the time of now for a new one
// that has none).
func (w *Writer) observe(ctx context.Context, generation int64) v1alpha1.NodeBGPState {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	got := w.source(cctx)
	st := *got.DeepCopy() // the source may keep what it returned
	st.ObservedGeneration = generation
	for i := range st.Conditions {
		c := &st.Conditions[i]
		if old := w.lastCondition(c.Type); old != nil && old.Status == c.Status {
			c.LastTransitionTime = old.LastTransitionTime
		} else if c.LastTransitionTime.IsZero() {
			c.LastTransitionTime = metav1.Now()
		}
	}
	return st
}

func (w *Writer) lastCondition(typ string) *metav1.Condition {
	if w.last == nil {
		return nil
	}
	for i := range w.last.Conditions {
		if w.last.Conditions[i].Type == typ {
			return &w.last.Conditions[i]
		}
	}
	return nil
}

// same reports whether a and b are the same state, but for when they were written and when their conditions
// last changed.
func same(a, b v1alpha1.NodeBGPState) bool {
	x, y := a.DeepCopy(), b.DeepCopy()
	x.Updated, y.Updated = nil, nil
	for _, s := range []*v1alpha1.NodeBGPState{x, y} {
		for i := range s.Conditions {
			s.Conditions[i].LastTransitionTime = metav1.Time{}
		}
	}
	return equality.Semantic.DeepEqual(x, y)
}

// failed logs err unless it was the last error logged, and schedules a retry with back-off.
func (w *Writer) failed(err error) time.Duration {
	w.backoff = min(max(2*w.backoff, w.tick), w.maxBackoff)
	w.retryAt = time.Now().Add(w.backoff)
	if msg := err.Error(); msg != w.lastErr {
		w.lastErr = msg
		w.log.Warn("BGPNodeStatus not written", "node", w.node, "err", err, "retry", w.backoff)
	}
	return w.backoff
}

func (w *Writer) succeeded() {
	if w.lastErr != "" {
		w.log.Info("BGPNodeStatus written again", "node", w.node)
	}
	w.lastErr, w.backoff, w.retryAt = "", 0, time.Time{}
}

var errCRDMissing = errors.New("the BGPNodeStatus resource does not exist")

// write writes st (with updated set to now) to the object's status, creating the object if it does not exist;
// on a conflict it reads the object again and tries once more.
func (w *Writer) write(ctx context.Context, st *v1alpha1.NodeBGPState) error {
	now := metav1.Now()
	st.Updated = &now
	status, err := runtime.DefaultUnstructuredConverter.ToUnstructured(st)
	if err != nil {
		return fmt.Errorf("convert status: %w", err)
	}
	obj, err := w.getOrCreate(ctx)
	if err != nil {
		return err
	}
	err = w.updateStatus(ctx, obj, status)
	if apierrors.IsConflict(err) {
		writes.WithLabelValues("conflict").Inc()
		if obj, err = w.getOrCreate(ctx); err != nil {
			return err
		}
		err = w.updateStatus(ctx, obj, status)
		if apierrors.IsConflict(err) {
			writes.WithLabelValues("conflict").Inc()
		}
	}
	return err
}

func (w *Writer) resource() dynamic.ResourceInterface {
	return w.client.Resource(v1alpha1.BGPNodeStatusesResource)
}

// getOrCreate reads the object, or creates it (owned by the Node, without status: the API server drops it).
func (w *Writer) getOrCreate(ctx context.Context) (*unstructured.Unstructured, error) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	obj, err := w.resource().Get(cctx, w.node, metav1.GetOptions{})
	if err == nil {
		return obj, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("get BGPNodeStatus %s: %w", w.node, err)
	}
	if !w.crdMissing {
		// The object is gone: the Node may have been deleted and created again, so read its UID afresh (retries
		// while the CRD is missing keep it).
		w.nodeUID = ""
	}
	uid, err := w.nodeUIDOf(ctx)
	if err != nil {
		return nil, err
	}
	u, err := v1alpha1.ToUnstructured(&v1alpha1.BGPNodeStatus{ObjectMeta: metav1.ObjectMeta{
		Name:            w.node,
		Labels:          map[string]string{labelNode: w.node},
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: w.node, UID: uid}},
	}})
	if err != nil {
		return nil, err
	}
	delete(u.Object, "status")
	cctx, cancel = context.WithTimeout(ctx, callTimeout)
	defer cancel()
	created, err := w.resource().Create(cctx, u, metav1.CreateOptions{})
	switch {
	case err == nil:
		return created, nil
	case apierrors.IsNotFound(err):
		return nil, errCRDMissing
	case apierrors.IsAlreadyExists(err): // created between the two calls
		obj, err = w.resource().Get(cctx, w.node, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("get BGPNodeStatus %s: %w", w.node, err)
		}
		return obj, nil
	}
	w.nodeUID = ""
	return nil, fmt.Errorf("create BGPNodeStatus %s: %w", w.node, err)
}

// nodeUIDOf returns the UID of the Node, read once and kept.
func (w *Writer) nodeUIDOf(ctx context.Context) (types.UID, error) {
	if w.nodeUID != "" {
		return w.nodeUID, nil
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	n, err := w.client.Resource(nodesResource).Get(cctx, w.node, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("get Node %s: %w", w.node, err)
	}
	if n.GetUID() == "" {
		return "", fmt.Errorf("node %s has no UID", w.node)
	}
	w.nodeUID = n.GetUID()
	return w.nodeUID, nil
}

// updateStatus writes status into obj's status subresource, at obj's resourceVersion.
func (w *Writer) updateStatus(ctx context.Context, obj *unstructured.Unstructured, status map[string]any) error {
	obj = obj.DeepCopy()
	obj.Object["status"] = status
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if _, err := w.resource().UpdateStatus(cctx, obj, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update BGPNodeStatus %s status: %w", w.node, err)
	}
	return nil
}

// delete deletes the object; one that does not exist (or a missing CRD) is fine.
func (w *Writer) delete(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	err := w.resource().Delete(cctx, w.node, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete BGPNodeStatus %s: %w", w.node, err)
	}
	if err == nil {
		w.log.Info("BGPNodeStatus deleted: node status reporting is disabled", "node", w.node)
	}
	return nil
}
