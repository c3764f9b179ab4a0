// Package evloop runs handlers for many raw sockets on a few goroutines, the
// way nginx does, instead of two goroutines per tunnel.
//
// A [Loop] is one epoll instance served by one goroutine. That goroutine
// does not block in epoll_wait and is not locked to a thread: the epoll fd
// is itself registered with Go's netpoller, so the goroutine parks like any
// goroutine waiting on a socket, and the netpoller wakes it when any socket
// of the loop has news. It then takes every ready event with a non-blocking
// epoll_wait and calls each socket's [Handler] inline. Per message that is
// the kernel work every proxy does (one read, one write) plus one wake-up
// for a whole batch of events, instead of a goroutine hand-off per socket.
//
// Sockets are registered edge-triggered: a handler is told once that a
// socket became readable or writable and must then read (or write) until
// the kernel says there is no more. [Read] and [Write] are the non-blocking
// system calls with the rules that make that cheap:
//
//   - The short-read rule: a read that returned less than the buffer has
//     drained the socket. Wait for the next [Readable] event instead of
//     reading again only to see EAGAIN. The exception is an event that
//     carries [ReadClosed], [HangUp] or [Error]: no further edge comes for
//     those, so read on until [Read] returns io.EOF or an error.
//   - Back-pressure: [Write] returns how much the kernel took. Keep the
//     rest, stop reading the socket it came from, and write again on the
//     next [Writable] event; only then read the source again.
//
// [DupConn] takes a socket out of a net.Conn, so that once the net.Conn is
// closed an idle tunnel costs two descriptors and its handler's state, not
// two goroutines, two net.Conns and their pollDescs.
//
// A [Group] spreads registrations over a few loops that start when first
// needed and stop when nothing was registered for a while.
//
// The package works on Linux only; elsewhere [Supported] is false and the
// constructors return [ErrUnsupported], so callers compile everywhere and
// keep a goroutine-based path.
package evloop

import (
	"errors"
	"fmt"
)

// Events says what a socket's handler is called for. Several can come at
// once; because registration is edge-triggered, Writable is also reported
// alongside other news while the socket can take bytes.
type Events uint8

const (
	// Readable: bytes (or the end of the stream) can be read.
	Readable Events = 1 << iota
	// Writable: the socket's send buffer has room.
	Writable
	// ReadClosed: the peer has shut down its side (a FIN arrived). Read
	// until io.EOF, ignoring the short-read rule: no further edge comes.
	ReadClosed
	// HangUp: both directions are closed.
	HangUp
	// Error: the socket has a pending error, which the next Read or Write
	// returns.
	Error
)

// Handler is told about a registered socket's events. It runs on the loop's
// goroutine, one handler at a time, so it needs no locks for state that only
// handlers and posted funcs of the same loop touch; for the same reason it
// must not block, and it must not panic.
type Handler interface {
	Ready(r *Reg, ev Events)
}

// HandlerFunc lets a function be a Handler.
type HandlerFunc func(r *Reg, ev Events)

// Ready calls f(r, ev).
func (f HandlerFunc) Ready(r *Reg, ev Events) { f(r, ev) }

// ErrWouldBlock is what Read and Write return when the socket has nothing
// more to give or take now; wait for the next event.
var ErrWouldBlock = errors.New("evloop: operation would block")

// ErrUnsupported is returned by the constructors where event loops are not
// available (every system but Linux).
var ErrUnsupported = fmt.Errorf("evloop: event loops need Linux: %w", errors.ErrUnsupported)
