//go:build !unix

package wsproxy

// descriptorCap is 0 (no default cap) where the limit cannot be read.
func descriptorCap() int { return 0 }
