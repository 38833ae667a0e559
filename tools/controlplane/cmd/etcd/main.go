// Command etcd runs the etcd server from go.etcd.io/etcd/server/v3/etcdmain,
// pinned at the version that k8s.io/kubernetes itself requires.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
