package model

import (
	"maps"
	"slices"
	"strings"
	"sync"
	"unique"
)

// Interning for the informer caches (Transform, and the policy controller's Pod transform): on a large cluster
// the same namespace names, node names, label sets and endpoint conditions repeat across tens of thousands of
// cached objects, each decoded into its own copy. The cached objects are shared and read-only (no component
// writes a cached object, and DeepCopy copies values), so they may share one copy.

// Intern returns s's canonical copy (the runtime's unique package: freed once no object holds it).
func Intern(s string) string {
	if s == "" {
		return ""
	}
	return unique.Make(s).Value()
}

// internCache maps a content key to a shared value. It is bounded: when full it starts over, so values of
// objects long gone are not kept forever (objects cached before keep their copies; only sharing is lost).
type internCache[V any] struct {
	mu  sync.Mutex
	max int
	m   map[string]V
}

func (c *internCache[V]) get(key string, mk func() V) V {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.m[key]; ok {
		return v
	}
	if c.m == nil || len(c.m) >= c.max {
		c.m = make(map[string]V, 64)
	}
	v := mk()
	c.m[key] = v
	return v
}

var labelSets = &internCache[map[string]string]{max: 20000}

// InternLabels returns a map equal to m shared with every other object interned with the same labels (the pods
// of one ReplicaSet have the same), its keys and values interned. Nil and empty maps stay as they are. The
// result must not be modified.
func InternLabels(m map[string]string) map[string]string {
	if len(m) == 0 {
		return m
	}
	keys := slices.Sorted(maps.Keys(m))
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(m[k])
		b.WriteByte(0)
	}
	return labelSets.get(b.String(), func() map[string]string {
		out := make(map[string]string, len(m))
		for k, v := range m {
			out[Intern(k)] = Intern(v)
		}
		return out
	})
}

// internStrings is a copy of m with its keys and values interned (for label sets that differ per object, such
// as a Node's, whose hostname label is its own).
func internStrings(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[Intern(k)] = Intern(v)
	}
	return out
}
