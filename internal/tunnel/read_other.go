//go:build !linux

package tunnel

import "errors"

// canPark is false where the buffer-free wait and the reactor are not
// implemented: pumps block in Read holding their buffer.
const canPark = false

// errParked is never returned here: pumps do not park.
var errParked = errors.New("pump parked")

// loopSrc passes what src sends, waiting in Read.
func (p *pump) loopSrc() error { return p.loopRead() }
