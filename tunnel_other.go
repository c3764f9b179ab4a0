//go:build !linux

package wsproxy

import (
	"errors"
	"net"
	"syscall"
)

// parkableConn returns nil where the buffer-free wait and the reactor are
// not implemented: the pump then blocks in Read holding its buffer.
func parkableConn(net.Conn) syscall.RawConn { return nil }

// rawReader is never used here: parkableConn returns nil, so pumps read
// through net.Conn.Read.
type rawReader struct{}

func newRawReader(syscall.RawConn) *rawReader { return &rawReader{} }

func (*rawReader) read() (*[]byte, int, error) {
	return nil, 0, errors.New("wsproxy: raw reads are implemented on Linux only")
}
