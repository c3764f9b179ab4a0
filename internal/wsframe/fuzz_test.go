package wsframe

import (
	"bytes"
	"errors"
	"testing"
)

// refHeader decodes a frame header the slow, obvious way, straight from the
// figure in RFC 6455 §5.2, as an oracle for ParseHeader. ok is false when b
// holds only part of a header.
func refHeader(b []byte) (h Header, n int, ok bool) {
	if len(b) < 2 {
		return h, 0, false
	}
	h.Fin = b[0]>>7 == 1
	h.Rsv = b[0] >> 4 & 7
	h.OpCode = b[0] & 15
	h.Masked = b[1]>>7 == 1
	n = 2
	switch l := b[1] & 127; {
	case l < 126:
		h.Length = uint64(l)
	case l == 126:
		if len(b) < n+2 {
			return h, 0, false
		}
		h.Length = uint64(b[2])<<8 | uint64(b[3])
		n += 2
	default:
		if len(b) < n+8 {
			return h, 0, false
		}
		for _, c := range b[2:10] {
			h.Length = h.Length<<8 | uint64(c)
		}
		n += 8
	}
	if h.Masked {
		if len(b) < n+4 {
			return h, 0, false
		}
		copy(h.Mask[:], b[n:n+4])
		n += 4
	}
	return h, n, true
}

// refErr is the verdict RFC 6455 gives on a complete header.
func refErr(h Header, b1 byte) error {
	switch {
	case b1&127 == 127 && h.Length >= 1<<63:
		return ErrLength
	case (h.OpCode > 2 && h.OpCode < 8) || h.OpCode > 10:
		return ErrReservedOpCode
	case h.OpCode >= 8 && h.Length > 125:
		return ErrControlLength
	case h.OpCode >= 8 && !h.Fin:
		return ErrControlFin
	case b1&127 == 126 && h.Length < 126, b1&127 == 127 && h.Length < 65536:
		return ErrNonMinimal
	}
	return nil
}

func FuzzParseHeader(f *testing.F) {
	for _, seed := range [][]byte{
		{},                                  // nothing
		{0x81},                              // one byte: never a whole header
		{0x81, 0x05},                        // unmasked text, 5 bytes
		{0x82, 0x85, 1, 2, 3, 4},            // masked binary, 5 bytes
		{0x82, 0x85, 1, 2, 3},               // masked, mask cut short
		{0x02, 126, 0x01, 0x00},             // 16-bit length 256, not final
		{0x02, 126, 0x00},                   // 16-bit length cut short
		{0x02, 126, 0x00, 0x7d},             // 16-bit length 125: not minimal
		{0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0}, // 64-bit length 65536
		{0x82, 127, 0, 0, 0, 0, 0, 0, 0xff, 0xff},     // 64-bit length 65535: not minimal
		{0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0},        // most significant bit set
		{0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 9, 9, 9}, // masked 64-bit length, mask cut short
		{0x89, 0x00},             // ping, empty
		{0x88, 0x7e, 0x00, 0x7d}, // close with a non-minimal 16-bit length of 125
		{0x88, 0x7e, 0x00, 0x7e}, // close with 126 bytes: too long for a control frame
		{0x09, 0x00},             // fragmented ping
		{0x83, 0x00},             // reserved data opcode
		{0x8b, 0x00},             // reserved control opcode
		{0xf1, 0x00},             // all RSV bits
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := ParseHeader(b)
		wantH, wantN, ok := refHeader(b)
		if !ok {
			if n != 0 || err != nil {
				t.Fatalf("ParseHeader(%x) = n %d, err %v on an incomplete header", b, n, err)
			}
			return
		}
		if n != wantN || n != HeaderLen(b[1]) {
			t.Fatalf("ParseHeader(%x): n = %d, want %d (HeaderLen %d)", b, n, wantN, HeaderLen(b[1]))
		}
		if wantErr := refErr(wantH, b[1]); !errors.Is(err, wantErr) {
			t.Fatalf("ParseHeader(%x): err = %v, want %v", b, err, wantErr)
		}
		if err == ErrLength {
			return // the other fields are not promised
		}
		if h != wantH {
			t.Fatalf("ParseHeader(%x) = %+v, want %+v", b, h, wantH)
		}
		// AppendHeader writes the minimal form: the same bytes unless the
		// input was not minimal, and in every case bytes that parse back.
		out := AppendHeader(nil, h)
		if err == nil && !bytes.Equal(out, b[:n]) {
			t.Fatalf("AppendHeader(ParseHeader(%x)) = %x", b[:n], out)
		}
		h2, n2, err2 := ParseHeader(out)
		if n2 != len(out) || h2 != h || errors.Is(err2, ErrNonMinimal) {
			t.Fatalf("round trip of %x: %x parses as %+v, %d, %v", b[:n], out, h2, n2, err2)
		}
		if len(out) > MaxHeaderLen {
			t.Fatalf("header of %d bytes is longer than MaxHeaderLen", len(out))
		}
	})
}
