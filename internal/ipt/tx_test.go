package ipt

import (
	"slices"
	"strings"
	"testing"
)

func TestBatchChunksAndLast(t *testing.T) {
	b := NewBatch("nat", 3)
	for i, n := range []int{2, 1, 2, 3, 1} {
		tx := b.Chunk(n)
		for j := range n {
			c := "C" + string(rune('a'+i)) + string(rune('0'+j))
			tx.Declare(c)
			tx.Rule(c, "-j RETURN")
		}
	}
	b.Last().Remove("OLD")
	if got := len(b.Chunks()); got != 4 {
		t.Fatalf("chunks = %d, want 4 (of 3, 2, 3 and 1 chains)", got)
	}
	f := NewFake()
	_ = f.Restore("nat", []byte("*nat\n:OLD - [0:0]\nCOMMIT\n"))
	written, size, err := b.Commit(f)
	if err != nil || written != 4 || size == 0 {
		t.Fatalf("Commit = %d, %d, %v", written, size, err)
	}
	if f.HasChain("nat", "OLD") || !f.HasChain("nat", "Cd2") {
		t.Fatal("the last chunk's deletion or a chain is missing")
	}
}

func TestSyncChainWritesOnlyDifferences(t *testing.T) {
	f := NewFake()
	rules := [][]string{{"-s", "10.244.1.0/24", "-m", "comment", "--comment", "canopy: pod egress", "-j", "MASQUERADE"}}
	for i, want := range []bool{true, false} {
		changed, err := SyncChain(f, f, "nat", "CANOPY-X", rules)
		if err != nil || changed != want {
			t.Fatalf("apply %d: changed %v, %v; want %v", i, changed, err, want)
		}
	}
	if got := f.Rules("nat", "CANOPY-X"); len(got) != 1 || !strings.Contains(got[0], `"canopy: pod egress"`) {
		t.Fatalf("rules %q", got)
	}
	j := Jump{Table: "nat", Chain: "POSTROUTING", Rule: []string{"-j", "CANOPY-X"}}
	for range 2 {
		if err := EnsureJumps(f, j); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.Rules("nat", "POSTROUTING"); !slices.Equal(got, []string{"-j CANOPY-X"}) {
		t.Fatalf("POSTROUTING %q", got)
	}
	if err := DeleteJumps(f, j); err != nil {
		t.Fatal(err)
	}
	if err := RemoveChain(f, "nat", "CANOPY-X"); err != nil || f.HasChain("nat", "CANOPY-X") {
		t.Fatalf("RemoveChain: %v", err)
	}
}
