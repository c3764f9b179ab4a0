//go:build race

package soak

// raceEnabled scales the soak down under the race detector (see config).
const raceEnabled = true
