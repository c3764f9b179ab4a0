package wsframe

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// refFrame is a frame as refFrames sees it: where it starts, its header's
// length and fields, and its payload unmasked when it is a control frame.
type refFrame struct {
	start, hdr int
	op         byte
	fin        bool
	length     uint64
	payload    []byte // control frames only
}

func (f refFrame) control() bool { return f.op >= 8 }

// refFrames decodes a whole stream the slow way, straight from RFC 6455
// §5.2, §5.1 (masks) and §5.5 (control frames), with a limit on message
// size (0: none): the oracle for Tracker. It returns every frame whose
// header is complete, and where following the stream stops: the start of
// an invalid frame (with the rule it breaks), or the end of the stream or
// of its unfinished tail.
func refFrames(s []byte, masked bool, limit uint64) (frames []refFrame, stop int, bad error) {
	pos := 0
	var msg uint64
	for pos < len(s) {
		rest := s[pos:]
		if len(rest) < 2 {
			break
		}
		b0, b1 := rest[0], rest[1]
		f := refFrame{start: pos, hdr: 2, op: b0 & 15, fin: b0&128 != 0, length: uint64(b1 & 127)}
		switch f.length {
		case 126:
			f.hdr += 2
		case 127:
			f.hdr += 8
		}
		m := b1&128 != 0
		if m {
			f.hdr += 4
		}
		if len(rest) < f.hdr {
			break
		}
		switch f.length {
		case 126:
			f.length = uint64(rest[2])<<8 | uint64(rest[3])
		case 127:
			f.length = 0
			for _, c := range rest[2:10] {
				f.length = f.length<<8 | uint64(c)
			}
		}
		switch {
		case f.length >= 1<<63:
			return frames, pos, ErrLength
		case f.op > 2 && f.op < 8, f.op > 10:
			return frames, pos, ErrReservedOpCode
		case f.control() && f.length > 125:
			return frames, pos, ErrControlLength
		case f.control() && !f.fin:
			return frames, pos, ErrControlFin
		case masked && !m:
			return frames, pos, ErrUnmasked
		case !masked && m:
			return frames, pos, ErrMasked
		}
		if f.control() {
			if uint64(len(rest)-f.hdr) < f.length {
				break
			}
			f.payload = append([]byte{}, rest[f.hdr:f.hdr+int(f.length)]...)
			if m {
				for i := range f.payload {
					f.payload[i] ^= rest[f.hdr-4+i%4]
				}
			}
			frames = append(frames, f)
			pos += f.hdr + int(f.length)
			continue
		}
		if f.op != 0 {
			msg = 0
		}
		msg += f.length
		if limit > 0 && msg > limit {
			return frames, pos, ErrTooBig
		}
		frames = append(frames, f)
		pos += f.hdr + int(min(f.length, uint64(len(rest)-f.hdr)))
	}
	return frames, pos, nil
}

// refState is where a tracker must be after reading s[:o]: the payload
// bytes left in the current data frame, and the bytes it must carry (a
// partial header or control frame).
func refState(frames []refFrame, stop, o int) (remaining uint64, carried int) {
	var f refFrame
	for _, fr := range frames {
		if fr.start > o {
			break
		}
		f = fr
	}
	if payload := o - f.start - f.hdr; !f.control() && payload >= 0 && uint64(payload) < f.length {
		return f.length - uint64(payload), 0
	}
	if o >= stop {
		return 0, o - stop
	}
	return 0, o - f.start
}

// trackStream feeds s to a Tracker in reads cut at arbitrary points
// (cuts[k]+1 bytes for the k-th, cycling; one read when cuts is empty),
// carrying tails the way a caller does, and calls check after every read.
// It returns the frames it saw, with the payload bytes that came for each
// (seen), and where it stopped: the first invalid frame, or the start of
// the carried tail.
func trackStream(s, cuts []byte, r Rules, check func(o int, tr *Tracker)) (frames []refFrame, seen []uint64, stop int, bad error) {
	var tr Tracker
	const headroom = 256
	for o, k := 0, 0; o < len(s); k++ {
		n := len(s) - o
		if len(cuts) > 0 {
			n = min(n, int(cuts[k%len(cuts)])+1)
		}
		buf := make([]byte, headroom+n)
		copy(buf[headroom:], s[o:o+n])
		start := tr.Restore(buf, headroom)
		data, at := buf[start:], o-(headroom-start) // at: the stream offset of data[0]
		for i := 0; i < len(data); {
			ev, m := tr.Next(data[i:], r)
			switch ev.Kind {
			case More:
				tr.Carry(data[i:])
				i = len(data)
				continue
			case Invalid:
				return frames, seen, at + i, ev.Err
			case Payload:
				seen[len(seen)-1] += uint64(m)
			case DataFrame, Control:
				h, hdr, _ := ParseHeader(data[i:])
				if ev.OpCode != h.OpCode || ev.Fin != h.Fin {
					panic("the event's opcode or FIN is not the header's")
				}
				f := refFrame{start: at + i, hdr: hdr, op: h.OpCode, fin: h.Fin, length: h.Length}
				if ev.Kind == Control {
					var pl [MaxControlPayload]byte
					f.payload = append([]byte{}, ControlPayload(data[i:i+m], &pl)...)
				}
				frames = append(frames, f)
				seen = append(seen, uint64(m-hdr))
			}
			if m == 0 {
				panic("Next made no progress")
			}
			i += m
		}
		o += n
		check(o, &tr)
	}
	return frames, seen, len(s) - tr.Carried(), nil
}

// FuzzTracker feeds a byte stream, cut into reads at arbitrary points,
// through a Tracker and compares what it sees with refFrames: the same
// frames at the same places with the same headers and control payloads,
// every data payload byte accounted for, the same verdict on the first
// invalid frame, and after every read the same position in the current
// frame and the same carried tail.
func FuzzTracker(f *testing.F) {
	mask := [4]byte{1, 2, 3, 4}
	frame := func(fin bool, op byte, masked bool, payload string) []byte {
		h := Header{Fin: fin, OpCode: op, Length: uint64(len(payload)), Masked: masked, Mask: mask}
		b := AppendHeader(nil, h)
		start := len(b)
		b = append(b, payload...)
		if masked {
			Mask(mask, 0, b[start:])
		}
		return b
	}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	long := strings.Repeat("x", 125)
	// A masked ping of 125 bytes with a 16-bit length: 133 bytes in all,
	// more than the 131 of the longest minimally encoded control frame.
	nonMinimalPing := append([]byte{0x89, 0x80 | 126, 0, 125, 1, 2, 3, 4}, frame(true, 9, true, long)[6:]...)

	// From a client (masked frames).
	f.Add(frame(true, 1, true, "hello"), []byte{}, true, uint16(0))                                                                // one text frame, one read
	f.Add(frame(true, 1, true, "hello"), []byte{0}, true, uint16(0))                                                               // one byte at a time
	f.Add(cat(frame(false, 1, true, "he"), frame(true, 9, true, "p"), frame(true, 0, true, "llo")), []byte{2, 6}, true, uint16(0)) // fragments around a ping
	f.Add(cat(frame(true, 8, true, "\x03\xe8"), frame(true, 1, true, "after close")), []byte{}, true, uint16(0))                   // a close frame, then more
	f.Add(cat(frame(true, 2, true, long), frame(true, 2, true, long)), []byte{200}, true, uint16(200))                             // second message over the limit
	f.Add(cat(frame(false, 2, true, long), frame(true, 0, true, long)), []byte{}, true, uint16(200))                               // fragments add up over the limit
	f.Add(cat(frame(true, 1, true, "a"), frame(true, 1, false, "b")), []byte{}, true, uint16(0))                                   // unmasked frame from the client
	f.Add(cat(frame(true, 1, true, "a"), nonMinimalPing, frame(true, 1, true, "b")), []byte{138, 0}, true, uint16(0))              // a carried 133-byte control frame
	f.Add(cat(frame(true, 1, true, "a"), []byte{0x8a, 0x88}), []byte{}, true, uint16(0))                                           // pong cut in its header
	// From a server (unmasked frames).
	f.Add(cat(frame(true, 10, false, "pong"), frame(true, 1, false, "x")), []byte{3}, false, uint16(0))                       // a pong cut in its payload
	f.Add(cat(frame(true, 1, false, "a"), frame(true, 1, true, "b")), []byte{}, false, uint16(0))                             // masked frame from the server
	f.Add(cat([]byte{0x82, 127, 0, 0, 0, 1, 0, 0, 0, 0}, []byte("partial")), []byte{4}, false, uint16(0))                     // 64-bit length, payload cut short
	f.Add([]byte{0x82, 127, 0, 0, 0, 0, 0, 0, 0, 5, 'a', 'b', 'c', 'd', 'e'}, []byte{}, false, uint16(0))                     // non-minimal 64-bit length passes
	f.Add([]byte{0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0}, []byte{}, false, uint16(0))                                           // 64-bit length with its top bit set
	f.Add([]byte{0x83, 0, 0x89, 0xff}, []byte{}, false, uint16(0))                                                            // reserved opcode
	f.Add([]byte{0x09, 0}, []byte{}, false, uint16(0))                                                                        // fragmented ping
	f.Add([]byte{0x89, 126, 0, 126}, []byte{}, false, uint16(0))                                                              // ping of 126 bytes
	f.Add(cat(frame(true, 2, false, ""), frame(false, 1, false, ""), frame(true, 0, false, "")), []byte{1}, false, uint16(1)) // empty frames

	f.Fuzz(func(t *testing.T, stream, cuts []byte, masked bool, limit uint16) {
		r := Rules{Masked: masked, MaxMessage: uint64(limit)}
		want, wantStop, wantBad := refFrames(stream, masked, r.MaxMessage)
		got, seen, stop, bad := trackStream(stream, cuts, r, func(o int, tr *Tracker) {
			if o > wantStop && wantBad != nil {
				return // past the invalid frame: nothing is promised
			}
			remaining, carried := refState(want, wantStop, o)
			if tr.Remaining() != remaining || tr.Carried() != carried {
				t.Fatalf("after %d bytes: remaining %d, carried %d; want %d, %d", o, tr.Remaining(), tr.Carried(), remaining, carried)
			}
		})
		if !errors.Is(bad, wantBad) || stop != wantStop {
			t.Fatalf("stopped at %d with %v, want %d with %v", stop, bad, wantStop, wantBad)
		}
		if len(got) != len(want) {
			t.Fatalf("%d frames, want %d:\n%+v\n%+v", len(got), len(want), got, want)
		}
		for i := range want {
			g, w := got[i], want[i]
			if !w.control() && seen[i] != min(w.length, uint64(len(stream)-w.start-w.hdr)) {
				t.Fatalf("frame %d: %d payload bytes seen, want %d", i, seen[i], min(w.length, uint64(len(stream)-w.start-w.hdr)))
			}
			if g.start != w.start || g.hdr != w.hdr || g.op != w.op || g.fin != w.fin || g.length != w.length || !bytes.Equal(g.payload, w.payload) {
				t.Fatalf("frame %d is %+v, want %+v", i, g, w)
			}
		}
	})
}
