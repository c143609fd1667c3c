// Package batchq drains a client-go work queue in batches: a burst of events becomes one sync of all the keys
// queued at that moment (coalesced by the queue), retried with the queue's rate limiter when it fails.
package batchq

import "k8s.io/client-go/util/workqueue"

// Run calls sync with every key queued (up to max at once) until the queue shuts down.
func Run(q workqueue.TypedRateLimitingInterface[string], max int, sync func(keys []string) error) {
	for {
		key, quit := q.Get()
		if quit {
			return
		}
		batch := []string{key}
		for n := q.Len(); n > 0 && len(batch) < max; n-- {
			k, quit := q.Get()
			if quit {
				break
			}
			batch = append(batch, k)
		}
		err := sync(batch)
		for _, k := range batch {
			if err != nil {
				q.AddRateLimited(k)
			} else {
				q.Forget(k)
			}
			q.Done(k)
		}
	}
}
