//go:build !linux

package tunnel

import "net"

// Elsewhere than Linux there are no event loops: every tunnel has the
// goroutine driver.

func (tn *Tunnel) moveToLoop() bool                         { return false }
func (tn *Tunnel) startLoop(clientBuf, backBuf []byte) bool { return false }
func (tn *Tunnel) finishAfterClose()                        { tn.finish() }
func isLoopSock(net.Conn) bool                              { return false }
func holdsBack(net.Conn) bool                               { return false }

// loopCount is the number of event loops the tests ask for; there are none.
var loopCount int
