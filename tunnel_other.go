//go:build !linux

package wsproxy

import "net"

// waitReadable returns at once where the buffer-free wait is not
// implemented: the pump then blocks in Read holding its buffer.
func waitReadable(net.Conn) error { return nil }
