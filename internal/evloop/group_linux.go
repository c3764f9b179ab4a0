package evloop

import "runtime"

// Group spreads sockets over a few loops. A tunnel's two sockets, its
// timers and its posted work should share one loop (Pick once, then use
// the loop), so that its handlers never run concurrently and need no locks.
type Group struct {
	loops []Loop
}

// NewGroup returns a group of n loops; n <= 0 means GOMAXPROCS/2, at least
// one. Half the processors, because each message costs kernel work on the
// sending and the receiving side, done in the loops' goroutines, and the
// rest of the program (handshakes, the netpoller's own thread) needs
// processors too. The loops start only when picked and used, and stop again
// when nothing is registered with them for a while.
func NewGroup(n int) (*Group, error) {
	if n <= 0 {
		n = max(1, runtime.GOMAXPROCS(0)/2)
	}
	return &Group{loops: make([]Loop, n)}, nil
}

// Pick returns the loop with the fewest registrations, the first such one
// on a tie, so that loops beyond what the load needs stay stopped. Two
// Picks at once can return the same loop; the balance is rough by design.
func (g *Group) Pick() *Loop {
	best := &g.loops[0]
	for i := range g.loops[1:] {
		if l := &g.loops[i+1]; l.load.Load() < best.load.Load() {
			best = l
		}
	}
	return best
}
