//go:build tools

// Builder module for kube-router: pins github.com/cloudnativelabs/kube-router/v2 and, through
// go.sum, every module it is built from (the build list is kube-router's own go.mod).
package tools

import _ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
