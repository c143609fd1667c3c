package model

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	networkinginformers "k8s.io/client-go/informers/networking/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// NewInformerFactory is the agent's shared informer factory: every object goes through Transform, and the
// Service, EndpointSlice, Node, Namespace and NetworkPolicy informers have none of the namespace index
// client-go gives each by default. Nothing in the agent lists these by namespace (a Get by key needs no index),
// and the index is a map entry per object: about 1.5 MB at 10,000 Services. Indexes a component adds
// (AddIndexers) are kept.
func NewInformerFactory(kube kubernetes.Interface) informers.SharedInformerFactory {
	f := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithTransform(Transform))
	// Each informer gets its own Indexers map: its indexer keeps the map and AddIndexers writes into it.
	f.InformerFor(&corev1.Service{}, func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return coreinformers.NewFilteredServiceInformer(c, metav1.NamespaceAll, resync, cache.Indexers{}, nil)
	})
	f.InformerFor(&discoveryv1.EndpointSlice{}, func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return discoveryinformers.NewFilteredEndpointSliceInformer(c, metav1.NamespaceAll, resync, cache.Indexers{}, nil)
	})
	f.InformerFor(&corev1.Node{}, func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return coreinformers.NewFilteredNodeInformer(c, resync, cache.Indexers{}, nil)
	})
	f.InformerFor(&corev1.Namespace{}, func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return coreinformers.NewFilteredNamespaceInformer(c, resync, cache.Indexers{}, nil)
	})
	f.InformerFor(&networkingv1.NetworkPolicy{}, func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return networkinginformers.NewFilteredNetworkPolicyInformer(c, metav1.NamespaceAll, resync, cache.Indexers{}, nil)
	})
	return f
}
