package resp

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/glob"
)

// redisVersion is the Redis version whose behaviour the endpoint follows for
// the commands it serves; clients that check versions see this.
const redisVersion = "7.0.0"

func gridVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "devel"
}

func cmdHello(c *conn, cmd *command, out []byte) []byte {
	a := cmd.args
	proto := c.proto
	if len(a) >= 2 {
		v, ok := api.ParseInt(a[1])
		if !ok {
			return appendError(out, "ERR Protocol version is not an integer or out of range")
		}
		if v < 2 || v > 3 {
			return appendError(out, "NOPROTO unsupported protocol version")
		}
		proto = int(v)
	}
	var name []byte
	setName := false
	for j := 2; j < len(a); j++ {
		switch {
		case isOpt(a[j], "AUTH") && j+2 < len(a):
			if msg := checkAuth(a[j+1]); msg != "" {
				return appendError(out, msg)
			}
			j += 2
		case isOpt(a[j], "SETNAME") && j+1 < len(a):
			name, setName = a[j+1], true
			j++
		default:
			return appendError(out, "ERR Syntax error in HELLO option '"+string(a[j])+"'")
		}
	}
	if setName {
		if !validName(name) {
			return appendError(out, "ERR Client names cannot contain spaces, newlines or special characters.")
		}
		c.metaMu.Lock()
		c.name = string(name)
		c.metaMu.Unlock()
	}
	c.setProto(proto)
	out = appendMap(out, 7, proto)
	out = appendBulkString(out, "server")
	out = appendBulkString(out, "redis")
	out = appendBulkString(out, "version")
	out = appendBulkString(out, redisVersion)
	out = appendBulkString(out, "proto")
	out = appendInt(out, int64(proto))
	out = appendBulkString(out, "id")
	out = appendInt(out, c.id)
	out = appendBulkString(out, "mode")
	out = appendBulkString(out, "standalone")
	out = appendBulkString(out, "role")
	out = appendBulkString(out, "master")
	out = appendBulkString(out, "modules")
	return appendArray(out, 0)
}

// checkAuth accepts the default user (no passwords are configured) and
// refuses every other user, as Redis does without ACLs.
func checkAuth(user []byte) string {
	if string(user) == "default" {
		return ""
	}
	return "WRONGPASS invalid username-password pair or user is disabled."
}

func cmdAuth(c *conn, cmd *command, out []byte) []byte {
	switch len(cmd.args) {
	case 2:
		return appendError(out, "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
	case 3:
		if msg := checkAuth(cmd.args[1]); msg != "" {
			return appendError(out, msg)
		}
		return appendSimple(out, "OK")
	}
	return appendError(out, errSyntax)
}

func cmdClient(c *conn, cmd *command, out []byte) []byte {
	a := cmd.args
	sub := strings.ToLower(string(a[1]))
	switch sub {
	case "id":
		if len(a) != 2 {
			break
		}
		return appendInt(out, c.id)
	case "setname":
		if len(a) != 3 {
			break
		}
		if !validName(a[2]) {
			return appendError(out, "ERR Client names cannot contain spaces, newlines or special characters.")
		}
		c.metaMu.Lock()
		c.name = string(a[2])
		c.metaMu.Unlock()
		return appendSimple(out, "OK")
	case "getname":
		if len(a) != 2 {
			break
		}
		c.metaMu.Lock()
		name := c.name
		c.metaMu.Unlock()
		if name == "" {
			return appendNull(out, c.proto)
		}
		return appendBulkString(out, name)
	case "setinfo":
		if len(a) != 4 {
			break
		}
		var field *string
		switch strings.ToLower(string(a[2])) {
		case "lib-name":
			field = &c.libName
		case "lib-ver":
			field = &c.libVer
		default:
			return appendError(out, "ERR Unrecognized option '"+clip(a[2])+"'")
		}
		if !validName(a[3]) {
			// Redis 7.2's text names the attribute as the client spelled it.
			return appendError(out, "ERR "+string(a[2])+" cannot contain spaces, newlines or special characters.")
		}
		c.metaMu.Lock()
		*field = string(a[3])
		c.metaMu.Unlock()
		return appendSimple(out, "OK")
	case "info":
		if len(a) != 2 {
			break
		}
		return appendVerbatim(out, c.describe()+"\n", c.proto)
	case "list":
		var b strings.Builder
		c.s.mu.Lock()
		conns := make([]*conn, 0, len(c.s.conns))
		for o := range c.s.conns {
			conns = append(conns, o)
		}
		c.s.mu.Unlock()
		slices.SortFunc(conns, func(x, y *conn) int { return int(x.id - y.id) })
		for _, o := range conns {
			b.WriteString(o.describe())
			b.WriteByte('\n')
		}
		return appendVerbatim(out, b.String(), c.proto)
	case "help":
		lines := []string{
			"CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
			"ID", "    Return the ID of the current connection.",
			"GETNAME", "    Return the name of the current connection.",
			"SETNAME <name>", "    Assign the name <name> to the current connection.",
			"SETINFO <LIB-NAME|LIB-VER> <value>", "    Set client library name or version.",
			"INFO", "    Return information about the current client connection.",
			"LIST", "    Return information about client connections.",
		}
		out = appendArray(out, len(lines))
		for _, l := range lines {
			out = appendSimple(out, l)
		}
		return out
	default:
		return appendError(out, "ERR unknown subcommand '"+clip(a[1])+"'. Try CLIENT HELP.")
	}
	return appendError(out, wrongArity("client|"+sub))
}

func clip(b []byte) string { return string(b[:min(len(b), 128)]) }

// describe is a CLIENT LIST line (a subset of Redis's fields).
func (c *conn) describe() string {
	c.metaMu.Lock()
	defer c.metaMu.Unlock()
	now := time.Now()
	return fmt.Sprintf("id=%d addr=%s laddr=%s name=%s age=%d idle=%d db=%s omem=%d tot-mem=%d resp=%d lib-name=%s lib-ver=%s cmd=%s",
		c.id, c.nc.RemoteAddr(), c.nc.LocalAddr(), c.name, int(now.Sub(c.created).Seconds()),
		int(now.Sub(c.lastAt).Seconds()), c.dbLabel, c.outBytes.Load(), c.memory(), c.proto, c.libName, c.libVer,
		strings.ToLower(c.lastCmd))
}

func cmdConfig(c *conn, cmd *command, out []byte) []byte {
	a := cmd.args
	switch strings.ToLower(string(a[1])) {
	case "get":
		if len(a) < 3 {
			return appendError(out, wrongArity("config|get"))
		}
		params := map[string]string{
			"save":               "",
			"appendonly":         "no",
			"maxmemory":          "0",
			"maxmemory-policy":   "noeviction",
			"databases":          strconv.Itoa(1 << 31 / 2),
			"maxclients":         strconv.Itoa(c.s.cfg.MaxClients),
			"timeout":            strconv.Itoa(int(c.s.cfg.IdleTimeout.Seconds())),
			"proto-max-bulk-len": strconv.Itoa(c.s.cfg.MaxBulk),
		}
		names := make([]string, 0, len(params))
		for k := range params {
			names = append(names, k)
		}
		slices.Sort(names)
		var hits []string
		for _, k := range names {
			for _, p := range a[2:] {
				if glob.Match(strings.ToLower(string(p)), k) {
					hits = append(hits, k)
					break
				}
			}
		}
		out = appendMap(out, len(hits), c.proto)
		for _, k := range hits {
			out = appendBulkString(out, k)
			out = appendBulkString(out, params[k])
		}
		return out
	case "set":
		if len(a) < 4 {
			return appendError(out, wrongArity("config|set"))
		}
		return appendError(out, "ERR Unknown option or number of arguments for CONFIG SET - '"+clip(a[2])+"'")
	case "resetstat":
		if len(a) != 2 {
			return appendError(out, wrongArity("config|resetstat"))
		}
		c.s.commands.Store(0)
		c.s.accepted.Store(0)
		c.s.rejected.Store(0)
		return appendSimple(out, "OK")
	}
	return appendError(out, "ERR unknown subcommand '"+clip(a[1])+"'. Try CONFIG HELP.")
}

func cmdCommand(c *conn, cmd *command, out []byte) []byte {
	a := cmd.args
	all := make([]*cmdSpec, 0, len(commandTable))
	for _, s := range commandTable {
		all = append(all, s)
	}
	slices.SortFunc(all, func(x, y *cmdSpec) int { return strings.Compare(x.name, y.name) })
	if len(a) == 1 {
		out = appendArray(out, len(all))
		for _, s := range all {
			out = appendCommandInfo(out, s)
		}
		return out
	}
	switch strings.ToLower(string(a[1])) {
	case "count":
		return appendInt(out, int64(len(all)))
	case "list":
		out = appendArray(out, len(all))
		for _, s := range all {
			out = appendBulkString(out, s.name)
		}
		return out
	case "info":
		names := a[2:]
		if len(names) == 0 {
			out = appendArray(out, len(all))
			for _, s := range all {
				out = appendCommandInfo(out, s)
			}
			return out
		}
		out = appendArray(out, len(names))
		for _, n := range names {
			if s := lookup([][]byte{n}); s != nil {
				out = appendCommandInfo(out, s)
			} else {
				out = appendNull(out, c.proto)
			}
		}
		return out
	case "docs":
		// No documentation is served; redis-cli then uses its built-in help.
		return appendMap(out, 0, c.proto)
	}
	return appendError(out, "ERR unknown subcommand '"+clip(a[1])+"'. Try COMMAND HELP.")
}

// appendCommandInfo writes a Redis 7 COMMAND INFO entry.
func appendCommandInfo(out []byte, s *cmdSpec) []byte {
	out = appendArray(out, 10)
	out = appendBulkString(out, s.name)
	out = appendInt(out, int64(s.arity))
	out = appendArray(out, len(s.flags))
	for _, f := range s.flags {
		out = appendSimple(out, f)
	}
	out = appendInt(out, int64(s.firstKey))
	out = appendInt(out, int64(s.lastKey))
	out = appendInt(out, int64(s.step))
	out = appendArray(out, 0)  // ACL categories
	out = appendArray(out, 0)  // tips
	out = appendArray(out, 0)  // key specs
	return appendArray(out, 0) // subcommands
}

func cmdInfo(c *conn, cmd *command, out []byte) []byte {
	want := map[string]bool{}
	for _, a := range cmd.args[1:] {
		want[strings.ToLower(string(a))] = true
	}
	all := len(want) == 0 || want["all"] || want["everything"] || want["default"]
	var b strings.Builder
	section := func(name string, lines func(kv func(k string, v any))) {
		if !all && !want[strings.ToLower(name)] {
			return
		}
		if b.Len() > 0 {
			b.WriteString("\r\n")
		}
		b.WriteString("# " + name + "\r\n")
		lines(func(k string, v any) { fmt.Fprintf(&b, "%s:%v\r\n", k, v) })
	}
	s := c.s
	node := s.node
	section("Server", func(kv func(string, any)) {
		up := time.Since(s.started)
		_, port, _ := strings.Cut(s.Addr().String(), "]:")
		if port == "" {
			port = s.Addr().String()[strings.LastIndexByte(s.Addr().String(), ':')+1:]
		}
		kv("redis_version", redisVersion)
		kv("redis_mode", "standalone")
		kv("grid_version", gridVersion())
		kv("os", runtime.GOOS+" "+runtime.GOARCH)
		kv("arch_bits", strconv.IntSize)
		kv("go_version", runtime.Version())
		kv("process_id", os.Getpid())
		kv("run_id", s.runID)
		kv("tcp_port", port)
		kv("uptime_in_seconds", int(up.Seconds()))
		kv("uptime_in_days", int(up.Hours()/24))
	})
	section("Clients", func(kv func(string, any)) {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		kv("connected_clients", n)
		kv("maxclients", s.cfg.MaxClients)
		kv("blocked_clients", 0)
	})
	section("Memory", func(kv func(string, any)) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		kv("used_memory", ms.HeapAlloc)
		kv("used_memory_human", human(ms.HeapAlloc))
		kv("used_memory_rss", ms.Sys)
		kv("used_memory_rss_human", human(ms.Sys))
		kv("mem_clients_normal", s.clientMemory())
		kv("maxmemory", 0)
		kv("maxmemory_human", "0B")
		kv("maxmemory_policy", "noeviction")
		kv("mem_allocator", "go")
	})
	section("Stats", func(kv func(string, any)) {
		kv("total_connections_received", s.accepted.Load())
		kv("total_commands_processed", s.commands.Load())
		kv("rejected_connections", s.rejected.Load())
		kv("client_query_buffer_limit_disconnections", s.qbufKills.Load())
		kv("client_output_buffer_limit_disconnections", s.obufKills.Load())
	})
	section("Keyspace", func(kv func(string, any)) {
		maps := []string{s.cfg.DefaultMap}
		if c.db != s.cfg.DefaultMap {
			maps = append(maps, c.db)
		}
		for i, name := range maps {
			n, err := s.node.Map(name).Size(cmd.ctx)
			if err != nil || n == 0 {
				continue
			}
			label := "db0"
			if i > 0 {
				label = name
			}
			kv(label, fmt.Sprintf("keys=%d", n))
		}
	})
	section("Grid", func(kv func(string, any)) {
		kv("grid_node", node.Name())
		kv("grid_rpc", node.RPCAddr())
		kv("grid_leader", node.Cluster().Leader())
		kv("grid_members", len(node.Cluster().Members()))
		kv("grid_partitions", node.Partitions())
		kv("grid_default_map", s.cfg.DefaultMap)
		kv("grid_selected_map", c.db)
		if t := node.Table(); t != nil {
			prim, back := 0, 0
			for _, p := range t.Partitions {
				if p.Primary == node.Name() {
					prim++
				}
				if slices.Contains(p.Backups, node.Name()) {
					back++
				}
			}
			kv("grid_table_version", t.Version)
			kv("grid_backups_per_partition", t.Backups)
			kv("grid_primaries_here", prim)
			kv("grid_backups_here", back)
		}
	})
	return appendVerbatim(out, b.String(), c.proto)
}

func human(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2fG", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.2fM", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.2fK", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}
