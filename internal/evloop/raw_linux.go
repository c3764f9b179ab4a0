package evloop

import (
	"syscall"
	"unsafe"
)

// The loop's system calls on its own descriptors are all non-blocking:
// reads and writes of non-blocking sockets, epoll_wait with a zero timeout,
// the eventfd. They go through RawSyscall, without the runtime's
// entersyscall and exitsyscall around them. Those exist so that a call that
// blocks can give its P away; none of these blocks, and the bookkeeping
// costs more than some of the calls themselves. Worse, entersyscall wakes
// the runtime's sysmon thread whenever it slept because the process was
// idle, and sysmon then polls every 20 µs for a while: at one message at a
// time, the process goes idle between any two messages, and that alone was
// a sixth of the proxy's CPU (issue 15).

// rawRead is read(2) of fd into p.
func rawRead(fd int, p []byte) (int, syscall.Errno) {
	r, _, errno := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(r), errno
}

// rawWrite is write(2) of p to fd.
func rawWrite(fd int, p []byte) (int, syscall.Errno) {
	r, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(r), errno
}

// pollNow is epoll_wait(2) with a zero timeout. epoll_pwait with no signal
// mask is the same call, and the one every Linux architecture has.
func pollNow(epfd int, events []syscall.EpollEvent) (int, syscall.Errno) {
	r, _, errno := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd),
		uintptr(unsafe.Pointer(unsafe.SliceData(events))), uintptr(len(events)), 0, 0, 0)
	return int(r), errno
}
