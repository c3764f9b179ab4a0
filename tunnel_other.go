//go:build !linux

package wsproxy

import (
	"errors"
	"net"
	"syscall"
)

// canPark is false where the buffer-free wait and the reactor are not
// implemented: pumps block in Read holding their buffer.
const canPark = false

// parkableConn returns nil here.
func parkableConn(net.Conn) syscall.RawConn { return nil }

// rawReader is never used here: parkableConn returns nil, so pumps read
// through net.Conn.Read.
type rawReader struct {
	deadline int64
	eof      bool
}

func newRawReader(*pump, syscall.RawConn) *rawReader { return &rawReader{} }

func (*rawReader) run() error {
	return errors.New("wsproxy: raw reads are implemented on Linux only")
}
