// Command etcd is upstream etcd's server entry point, built at the version
// k8s.io/kubernetes v1.34 is tested with; Debian 12's etcd 3.4.23 lacks the
// health endpoints kube-apiserver 1.31+ probes.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
