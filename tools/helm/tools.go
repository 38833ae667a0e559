//go:build tools

// Package helm pins the helm commands built by build.sh (helm 4, and helm 3 to test the
// chart with both) so that `go mod tidy` keeps their dependencies in go.mod.
package helm

import (
	_ "helm.sh/helm/v3/cmd/helm"
	_ "helm.sh/helm/v4/cmd/helm"
)
