package evloop

import (
	"os"
	"syscall"
)

// spliceFlags: never wait on the pipe, and move pages rather than copy
// them where the kernel can.
const spliceFlags = 0x1 | 0x2 // SPLICE_F_MOVE | SPLICE_F_NONBLOCK

// Splice moves up to n bytes from the descriptor in to out, one of them a
// pipe and the other a non-blocking socket, without copying them through
// user space (splice(2)), and returns how many moved: (0, nil) is the end
// of the socket's stream. Like Write, it returns ErrWouldBlock when fewer
// than n moved and no error said why: the socket or the pipe has no more
// bytes or room now. Like Read and Write it is a raw system call, which
// never blocks.
func Splice(in, out, n int) (int, error) {
	for {
		m, _, errno := syscall.RawSyscall6(syscall.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), spliceFlags)
		switch {
		case errno == 0 && m > 0 && int(m) < n:
			return int(m), ErrWouldBlock
		case errno == 0:
			return int(m), nil
		case errno == syscall.EINTR:
			continue
		case errno == syscall.EAGAIN:
			return 0, ErrWouldBlock
		}
		return 0, os.NewSyscallError("splice", errno)
	}
}
