// A CoreDNS with the plugins the Gateway API conformance suite's Corefile names (its
// UDPRoute backend, base/manifests.yaml: errors, log, forward, whoami), built the way
// CoreDNS documents for a custom build: its server and plugins as a library. The node
// emulator runs it for pods of CoreDNS's image (hack/kubefleet/nodeemu/echobasic.py).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/whoami"
)

// The plugins in the order a request passes them (CoreDNS's plugin.cfg order).
func init() {
	dnsserver.Directives = []string{"errors", "log", "forward", "whoami"}
}

func main() { coremain.Run() }
