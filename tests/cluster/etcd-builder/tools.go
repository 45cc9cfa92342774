//go:build tools

// Package tools records the etcd main package (go.etcd.io/etcd/server/v3) for `go mod tidy`.
package tools

import _ "go.etcd.io/etcd/server/v3"
