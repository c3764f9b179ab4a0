//go:build !linux

package tunnel

// Elsewhere than Linux there is no reactor: pumps wait in their goroutine.
type reactor struct{}

var theReactor reactor

func (*reactor) park(*pump) bool   { return false }
func (*reactor) unpark(*pump) bool { return false }
func (*reactor) holds(*pump) bool  { return false }
