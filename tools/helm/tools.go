//go:build tools

// Package helm pins the helm command built by build.sh so that `go mod tidy`
// keeps its dependencies in go.mod.
package helm

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
