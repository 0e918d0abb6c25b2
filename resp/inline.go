package resp

// splitArgs splits an inline command like Redis's sdssplitargs: words
// separated by spaces, "double quotes" with \n \r \t \b \a \\ \" and \xHH
// escapes, 'single quotes' with \' only. A closing quote must be followed by
// a space or the end of the line. Quoted words are unescaped in place.
func splitArgs(args [][]byte, line []byte) ([][]byte, error) {
	i := 0
	for {
		for i < len(line) && isSpace(line[i]) {
			i++
		}
		if i == len(line) {
			return args, nil
		}
		out := line[i:i] // unescaped bytes are written over the input
		inDQ, inSQ := false, false
		for {
			if inDQ {
				if i == len(line) {
					return args, errQuotes
				}
				c := line[i]
				switch {
				case c == '\\' && i+3 < len(line) && line[i+1] == 'x' && isHex(line[i+2]) && isHex(line[i+3]):
					out = append(out, unhex(line[i+2])<<4|unhex(line[i+3]))
					i += 4
				case c == '\\' && i+1 < len(line):
					i++
					switch e := line[i]; e {
					case 'n':
						out = append(out, '\n')
					case 'r':
						out = append(out, '\r')
					case 't':
						out = append(out, '\t')
					case 'b':
						out = append(out, '\b')
					case 'a':
						out = append(out, '\a')
					default:
						out = append(out, e)
					}
					i++
				case c == '"':
					i++
					if i < len(line) && !isSpace(line[i]) {
						return args, errQuotes
					}
					inDQ = false
					goto word
				default:
					out = append(out, c)
					i++
				}
			} else if inSQ {
				if i == len(line) {
					return args, errQuotes
				}
				c := line[i]
				switch {
				case c == '\\' && i+1 < len(line) && line[i+1] == '\'':
					out = append(out, '\'')
					i += 2
				case c == '\'':
					i++
					if i < len(line) && !isSpace(line[i]) {
						return args, errQuotes
					}
					inSQ = false
					goto word
				default:
					out = append(out, c)
					i++
				}
			} else {
				if i == len(line) || isSpace(line[i]) {
					goto word
				}
				switch c := line[i]; c {
				case '"':
					inDQ = true
				case '\'':
					inSQ = true
				default:
					out = append(out, c)
				}
				i++
			}
		}
	word:
		args = append(args, out[:len(out):len(out)])
	}
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
