// Runs the Gateway API conformance suite exactly as upstream's conformance/conformance_test.go
// does; every flag (-gateway-class, -supported-features, -run-test, -report-output,
// -organization, ...) is the suite's own. Built into a test binary by hack/build-conformance.
package conformance_test

import (
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
)

func TestConformance(t *testing.T) {
	conformance.RunConformance(t)
}
