//go:build unix

package wsproxy

import "syscall"

// descriptorCap is the default WithMaxTunnels: the tunnels the process's
// descriptor limit can hold, two descriptors each, with 256 left for
// listeners, backends' handshakes, logs and the rest of the program.
func descriptorCap() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Cur == ^uint64(0) || lim.Cur > 1<<30 {
		return 0 // unlimited
	}
	if lim.Cur <= 512 {
		return int(lim.Cur / 4)
	}
	return int((lim.Cur - 256) / 2)
}
