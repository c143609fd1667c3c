package routes

import "fmt"

// OpKind is what an Op does to the kernel table.
type OpKind uint8

const (
	// OpAdd creates the route (like NetlinkTable.Add): it fails with an error matching ErrRouteExists when the
	// table already has a route to the destination with the same metric, of any protocol.
	OpAdd OpKind = iota + 1
	// OpReplace adds the route or replaces the one to the destination with the same metric, whatever its
	// protocol (like Table.Replace): use it only for routes known to be ours.
	OpReplace
	// OpDelete deletes our route to the destination (like Table.Delete): a missing route is not an error, a
	// route of another protocol is left alone. Route.NextHops is ignored.
	OpDelete
)

func (k OpKind) String() string {
	switch k {
	case OpAdd:
		return "add"
	case OpReplace:
		return "replace"
	case OpDelete:
		return "delete"
	}
	return fmt.Sprintf("OpKind(%d)", uint8(k))
}

// Op is one route change of a batch.
type Op struct {
	Kind  OpKind
	Route Route // Dst, and NextHops (sorted, unique) for OpAdd and OpReplace
}

// Batcher is the optional batch method of a Table. A Manager with such a Table sends the route changes of
// SetMany, Resync and SweepStale through it, many at a time, instead of one Table call each.
//
// Batch applies ops in order, each on its own: one failing does not stop or undo the others (a later op on the
// same destination sees the outcome of the earlier ones). It returns nil when every op succeeded, and otherwise a
// slice as long as ops with the error of ops[i] at i (nil where it succeeded). Errors mean what they mean for the
// single calls: OpAdd's matches ErrRouteExists when a route is in the way; OpDelete of a missing route succeeds.
//
// The ops' NextHops slices are shared with the caller: implementations must not modify or keep them.
type Batcher interface {
	Batch(ops []Op) []error
}

// batchErrs is the result slice of a Batch: allocated on the first failure only.
type batchErrs struct {
	errs []error
	n    int // len of ops
}

func (b *batchErrs) set(i int, err error) {
	if b.errs == nil {
		b.errs = make([]error, b.n)
	}
	b.errs[i] = err
}
