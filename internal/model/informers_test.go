package model

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

// TestInformerFactory: the factory's informers keep no namespace index, an index a component adds is kept (and
// only on its informer), objects go through Transform, and the listers still find objects by namespace.
func TestInformerFactory(t *testing.T) {
	kube := fake.NewClientset(
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "a",
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "b"}},
		&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "a"}},
	)
	f := NewInformerFactory(kube)
	svcs, slices := f.Core().V1().Services(), f.Discovery().V1().EndpointSlices()
	nodes, nss, pols := f.Core().V1().Nodes(), f.Core().V1().Namespaces(), f.Networking().V1().NetworkPolicies()
	if err := slices.Informer().AddIndexers(cache.Indexers{"mine": func(any) ([]string, error) { return []string{"x"}, nil }}); err != nil {
		t.Fatal(err)
	}
	for name, inf := range map[string]cache.SharedIndexInformer{"services": svcs.Informer(), "slices": slices.Informer(),
		"nodes": nodes.Informer(), "namespaces": nss.Informer(), "policies": pols.Informer()} {
		ix := inf.GetIndexer().GetIndexers()
		if _, ok := ix[cache.NamespaceIndex]; ok {
			t.Errorf("%s: has the namespace index", name)
		}
		if _, ok := ix["mine"]; ok != (name == "slices") {
			t.Errorf("%s: the added index: %v", name, ok)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f.Start(ctx.Done())
	for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			t.Fatalf("%v did not sync", typ)
		}
	}
	a, err := svcs.Lister().Services("a").List(labels.Everything())
	if err != nil || len(a) != 1 || a[0].Namespace != "a" {
		t.Fatalf("services of namespace a: %v, %v", a, err)
	}
	if a[0].ManagedFields != nil {
		t.Error("not transformed: managedFields kept")
	}
	// A slice is cached as what the model keeps of it (Transform), found by its key.
	if o, ok, err := slices.Informer().GetIndexer().GetByKey("a/web-1"); err != nil || !ok || o.(*Slice).Name != "web-1" {
		t.Errorf("slice: %v, %v, %v", o, ok, err)
	}
}
