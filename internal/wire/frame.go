// Package wire is the grid's binary protocol: length-prefixed frames with a
// fixed header and a msgpack body.
//
// Frame layout (big endian):
//
//	uint32 length   of everything after this field (header + body)
//	uint8  type     message type (MsgXxx)
//	uint8  flags    FlagResponse, FlagError
//	uint64 id       request id; a response carries its request's id
//	[]byte body     msgpack encoding of the message struct (ErrorBody if FlagError)
//
// Compatibility: message types, operations and error codes are append-only.
// Structs are encoded as msgpack arrays, and msgpack v5 refuses an array
// whose length differs from the struct's field count, so adding a field is a
// breaking change: until a versioned handshake exists, every member and
// client of a cluster must run the same build.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// HeaderSize is the size of a frame header after the length prefix.
const HeaderSize = 1 + 1 + 8

// DefaultMaxFrame is the default largest frame accepted (length field value).
const DefaultMaxFrame = 64 << 20

// Frame flags.
const (
	FlagResponse uint8 = 1 << 0
	FlagError    uint8 = 1 << 1
)

// Errors returned by ReadFrame for malformed input.
var (
	ErrFrameTooLarge = errors.New("wire: frame exceeds the maximum size")
	ErrFrameTooShort = errors.New("wire: frame shorter than its header")
)

// Frame is one decoded frame. Body aliases the buffer it was read into.
type Frame struct {
	Type  uint8
	Flags uint8
	ID    uint64
	Body  []byte
}

// IsResponse reports whether f answers a request.
func (f *Frame) IsResponse() bool { return f.Flags&FlagResponse != 0 }

// ReadFrame reads one frame from r. Frames longer than max or shorter than
// a header are rejected without reading their body. The body is a new slice.
func ReadFrame(r io.Reader, max int) (Frame, error) {
	var hdr [4 + HeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:4]); err != nil {
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(hdr[:4])
	if n < HeaderSize {
		return Frame{}, fmt.Errorf("%w: length %d", ErrFrameTooShort, n)
	}
	if uint64(n) > uint64(max) {
		return Frame{}, fmt.Errorf("%w: length %d > %d", ErrFrameTooLarge, n, max)
	}
	if _, err := io.ReadFull(r, hdr[4:]); err != nil {
		return Frame{}, noEOF(err)
	}
	f := Frame{Type: hdr[4], Flags: hdr[5], ID: binary.BigEndian.Uint64(hdr[6:])}
	if body := int(n) - HeaderSize; body > 0 {
		f.Body = make([]byte, body)
		if _, err := io.ReadFull(r, f.Body); err != nil {
			return Frame{}, noEOF(err)
		}
	}
	return f, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// AppendHeader appends a frame header for a body of bodyLen bytes to dst.
func AppendHeader(dst []byte, typ, flags uint8, id uint64, bodyLen int) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(HeaderSize+bodyLen))
	dst = append(dst, typ, flags)
	return binary.BigEndian.AppendUint64(dst, id)
}

// PutLength rewrites the length prefix of a frame that starts at dst[0]
// once its body has been appended.
func PutLength(frame []byte) {
	binary.BigEndian.PutUint32(frame, uint32(len(frame)-4))
}
