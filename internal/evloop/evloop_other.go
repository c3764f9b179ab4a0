//go:build !linux

package evloop

import "syscall"

// Supported reports whether this system has event loops.
const Supported = false

// Loop is an event loop; see the Linux build. Here it cannot be made.
type Loop struct{}

// NewLoop returns ErrUnsupported.
func NewLoop() (*Loop, error) { return nil, ErrUnsupported }

// Add returns ErrUnsupported.
func (l *Loop) Add(fd int, h Handler) (*Reg, error) { return nil, ErrUnsupported }

// Register returns ErrUnsupported.
func (l *Loop) Register(r *Reg, fd int, h Handler) error { return ErrUnsupported }

// Post returns ErrUnsupported.
func (l *Loop) Post(f func()) error { return ErrUnsupported }

// Reg is a registered socket; see the Linux build.
type Reg struct{}

// Fd returns -1.
func (r *Reg) Fd() int { return -1 }

// Loop returns nil.
func (r *Reg) Loop() *Loop { return nil }

// Close does nothing.
func (r *Reg) Close() {}

// Group is a set of loops; see the Linux build. Here it cannot be made.
type Group struct{}

// NewGroup returns ErrUnsupported.
func NewGroup(n int) (*Group, error) { return nil, ErrUnsupported }

// Pick returns nil.
func (g *Group) Pick() *Loop { return nil }

// Read returns ErrUnsupported.
func Read(fd int, p []byte) (int, error) { return 0, ErrUnsupported }

// Write returns ErrUnsupported.
func Write(fd int, p []byte) (int, error) { return 0, ErrUnsupported }

// ShutdownWrite returns ErrUnsupported.
func ShutdownWrite(fd int) error { return ErrUnsupported }

// DupConn returns ErrUnsupported.
func DupConn(c syscall.Conn) (int, error) { return -1, ErrUnsupported }
