package wstest

import (
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
)

// Unanswered returns a loopback address whose listener never answers a
// SYN, for a connect that neither succeeds nor fails: its accept queue
// (one place, from listen's backlog of 0) is full and never accepted from,
// so Linux drops every further connection attempt.
func Unanswered(t testing.TB) netip.AddrPort {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	loopback := [4]byte{127, 0, 0, 1}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: loopback}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.AddrPortFrom(netip.AddrFrom4(loopback), uint16(sa.(*syscall.SockaddrInet4).Port))
	filler, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
	return addr
}

// OpenFDs counts the process's descriptors whose /proc/self/fd link
// satisfies is ("socket:[123]", "anon_inode:[eventpoll]", ...).
func OpenFDs(t testing.TB, is func(link string) bool) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if link, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && is(link) {
			n++
		}
	}
	return n
}

// IsSocket reports whether a /proc/self/fd link names a socket, for OpenFDs.
func IsSocket(link string) bool { return len(link) > 7 && link[:7] == "socket:" }
