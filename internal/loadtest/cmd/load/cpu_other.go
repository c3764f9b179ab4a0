//go:build !unix

package main

import "time"

// selfCPU is unknown here: the load tool measures CPU from /proc, on Linux.
func selfCPU() time.Duration { return 0 }
