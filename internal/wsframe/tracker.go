package wsframe

import "errors"

// A Tracker follows the frames of one direction of a WebSocket stream
// without decoding payloads: it says where each frame starts and ends,
// holds control frames until they are whole, enforces the mask and
// message-size rules, and keeps the tail of a read that ends inside a frame
// header or a control frame until the next read. It does no I/O.
//
// The zero Tracker is at the start of a stream. Its rules (Rules) are
// passed to each call rather than kept, so that a tracker costs 24 bytes to
// every idle connection that holds one.
type Tracker struct {
	remaining uint64 // payload bytes of the current data frame still to come
	msgSize   uint64 // payload bytes of the current (possibly fragmented) message so far
	carry     *carry // the unconsumed tail; allocated on first use, as most streams never need it
}

// A carry holds a partial header or control frame between two reads: at
// most MaxControlFrame bytes.
type carry struct {
	n uint8
	b [MaxControlFrame]byte
}

// Rules are what a stream's frames must obey beyond RFC 6455's framing.
type Rules struct {
	Masked     bool   // frames come from a client and must be masked (§5.1); otherwise none may be
	MaxMessage uint64 // the largest message payload allowed; 0 means no limit
}

// Kind says what Next found.
type Kind uint8

const (
	// More: data ends inside a frame header or a control frame. Pass the
	// rest of data to Carry and call Next again when more bytes came.
	More Kind = iota
	// Payload: n bytes of the current data frame's payload, the rest of
	// it that an earlier read did not hold.
	Payload
	// DataFrame: the header of a data frame and as much of its payload as
	// data holds, n bytes; Remaining says how much of it is still to come.
	DataFrame
	// Control: a whole control frame, header and payload, n bytes.
	Control
	// Invalid: the frame at the start of data breaks a rule (Event.Err).
	// The stream cannot be followed past it.
	Invalid
)

// An Event is one step through a stream. It is small enough to be
// returned in registers: Next runs once or twice per frame.
type Event struct {
	Kind   Kind
	OpCode byte  // for DataFrame and Control
	Fin    bool  // for DataFrame: the frame ends its message
	Err    error // for Invalid
}

// Errors the tracker reports on top of ParseHeader's.
var (
	ErrUnmasked = errors.New("wsframe: unmasked frame from the client")
	ErrMasked   = errors.New("wsframe: masked frame from the server")
	ErrTooBig   = errors.New("wsframe: message larger than the limit")
)

// Next reads the next step of the stream at the start of data, which must
// not be empty, and returns it with the number of bytes it covers. A
// header whose length is not minimally encoded is followed, as it can be
// without harm.
func (t *Tracker) Next(data []byte, r Rules) (Event, int) {
	if t.remaining > 0 {
		k := min(uint64(len(data)), t.remaining)
		t.remaining -= k
		return Event{Kind: Payload}, int(k)
	}
	h, n, err := ParseHeader(data)
	switch {
	case n == 0:
		return Event{Kind: More}, 0
	case err != nil && err != ErrNonMinimal:
		return Event{Kind: Invalid, Err: err}, 0
	case h.Masked != r.Masked && r.Masked:
		return Event{Kind: Invalid, Err: ErrUnmasked}, 0
	case h.Masked != r.Masked:
		return Event{Kind: Invalid, Err: ErrMasked}, 0
	}
	if h.IsControl() {
		end := n + int(h.Length)
		if end > len(data) {
			return Event{Kind: More}, 0
		}
		return Event{Kind: Control, OpCode: h.OpCode, Fin: true}, end
	}
	if h.OpCode != OpContinuation {
		t.msgSize = 0
	}
	t.msgSize += h.Length
	if r.MaxMessage > 0 && t.msgSize > r.MaxMessage {
		return Event{Kind: Invalid, Err: ErrTooBig}, 0
	}
	k := min(uint64(len(data)-n), h.Length)
	t.remaining = h.Length - k
	return Event{Kind: DataFrame, OpCode: h.OpCode, Fin: h.Fin}, n + int(k)
}

// Remaining returns the payload bytes of the current data frame still to
// come: 0 at a frame boundary.
func (t *Tracker) Remaining() uint64 { return t.remaining }

// Skip accounts for n bytes of the current data frame's payload that went
// past the tracker (spliced by the kernel); n must not exceed Remaining.
func (t *Tracker) Skip(n uint64) { t.remaining -= n }

// Carry keeps tail, the bytes after Next returned More, for the next read.
// It holds at most MaxControlFrame bytes, which is all such a tail can be.
func (t *Tracker) Carry(tail []byte) {
	if t.carry == nil {
		t.carry = new(carry)
	}
	t.carry.n = uint8(copy(t.carry.b[:], tail))
}

// Carried returns how many bytes the tracker carries.
func (t *Tracker) Carried() int {
	if t.carry == nil {
		return 0
	}
	return int(t.carry.n)
}

// Restore copies the carried bytes into buf right before buf[at:], where
// the next read is, and returns where they start: the stream goes on at
// buf[start:]. at must leave room for MaxControlFrame bytes.
func (t *Tracker) Restore(buf []byte, at int) (start int) {
	if t.carry == nil || t.carry.n == 0 {
		return at
	}
	start = at - int(t.carry.n)
	copy(buf[start:], t.carry.b[:t.carry.n])
	t.carry.n = 0
	return start
}

// ControlPayload copies the payload of a whole control frame (the n bytes
// of a Control event) into dst, unmasked, and returns it.
func ControlPayload(frame []byte, dst *[MaxControlPayload]byte) []byte {
	h, n, _ := ParseHeader(frame)
	pl := dst[:copy(dst[:], frame[n:])]
	if h.Masked {
		Mask(h.Mask, 0, pl)
	}
	return pl
}
