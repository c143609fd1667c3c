package batchq

import (
	"errors"
	"slices"
	"testing"

	"k8s.io/client-go/util/workqueue"
)

func TestRunBatchesAndRetries(t *testing.T) {
	q := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	for _, k := range []string{"a", "b", "c", "a"} {
		q.Add(k)
	}
	var calls [][]string
	failed := false
	done := make(chan struct{})
	go func() {
		Run(q, 100, func(keys []string) error {
			calls = append(calls, slices.Clone(keys))
			if !failed {
				failed = true
				return errors.New("once")
			}
			q.ShutDown()
			return nil
		})
		close(done)
	}()
	<-done
	if len(calls) != 2 || !slices.Equal(calls[0], []string{"a", "b", "c"}) {
		t.Fatalf("calls %v", calls)
	}
	slices.Sort(calls[1])
	if !slices.Equal(calls[1], []string{"a", "b", "c"}) {
		t.Fatalf("the failed batch was not retried whole: %v", calls)
	}
}
