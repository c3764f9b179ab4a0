//go:build !linux

package wsproxy

import (
	"net"
	"syscall"
)

// parkableConn returns nil where the buffer-free wait and the reactor are
// not implemented: the pump then blocks in Read holding its buffer.
func parkableConn(net.Conn) syscall.RawConn { return nil }

func (p *pump) readRaw() (*[]byte, int, error) { panic("wsproxy: no raw reads here") }
