// Package soak holds the soak and chaos test of wsproxy: thousands of
// tunnels through one proxy to in-process echo backends that are killed and
// restarted, target sets that change, clients that stop reading, and a
// final Shutdown, after which every acknowledged message must have come
// back intact and in order and every goroutine, file descriptor and byte of
// heap must be given back. It has no code of its own outside its tests;
// see soak_test.go for the settings and scripts/soak.sh for the full-size
// run.
package soak
