//go:build unix

package wsproxy

import "syscall"

// descriptorCap is the default WithMaxTunnels, from the process's
// descriptor limit (see tunnelCapFor).
func descriptorCap() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	// Cur is a uint64 on most systems and an int64 on FreeBSD and
	// DragonFly, where RLIM_INFINITY is -1: converted, it is all ones too.
	return tunnelCapFor(uint64(lim.Cur))
}

// tunnelCapFor is the number of tunnels a descriptor limit of n can hold:
// each tunnel holds two descriptors, and 256 of them, or half of n when n
// is less than 512, stay for listeners, backends' handshakes, logs and the
// rest of the program. 0 (no cap) for an unlimited or huge limit.
func tunnelCapFor(n uint64) int {
	if n > 1<<30 {
		return 0
	}
	return max(1, int((n-min(n/2, 256))/2))
}
