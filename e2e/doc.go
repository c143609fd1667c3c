// Package e2e holds the tests that run in the virtual data centre (package lab): the real agent binary in
// every node namespace, FRR as the ToR, a real kube-apiserver and controller-manager, and traffic that really
// flows between pod namespaces. One lab is brought up for the whole package (TestMain); tests that change it
// put it back as they found it.
package e2e
