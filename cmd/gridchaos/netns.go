package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Network partitions (-netns): every node runs in its own network namespace
// gcnI with address 10.77.0.I on a veth whose host end (gcvI) is attached to
// bridge gcbr0; the harness (root namespace) is 10.77.0.254 on gcbr0. A
// partition moves the minority's veths to bridge gcbr1: the two sides can no
// longer reach each other, while /32 routes through gcbr1 keep the minority
// reachable from the harness, so clients can observe that it refuses to
// serve. Healing moves them back. These addresses exist only inside this
// machine's own namespaces.

const (
	bridgeMain  = "gcbr0"
	bridgeSplit = "gcbr1"
	hostAddr    = "10.77.0.254"
)

// netnsUnusable says why network namespaces cannot be used here, or "".
func netnsUnusable() string {
	if os.Geteuid() != 0 {
		return "network namespaces need root"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "no ip command"
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return "ip netns list: " + err.Error()
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "gcn") {
			return "namespaces gcn* exist (another gridchaos -netns run, or a crashed one: ip netns del them)"
		}
	}
	return ""
}

func sh(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func nsName(i int) string   { return fmt.Sprintf("gcn%d", i) }
func vethName(i int) string { return fmt.Sprintf("gcv%d", i) }
func nsAddr(i int) string   { return fmt.Sprintf("10.77.0.%d", i) }

// netTeardown removes everything netSetup and addNode created (also what a
// crashed earlier run left behind).
func netTeardown() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "gcn") {
			_ = sh("ip", "netns", "del", f[0])
		}
	}
	out, _ = exec.Command("ip", "-o", "link", "show").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], "gcv") {
			_ = sh("ip", "link", "del", strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0])
		}
	}
	_ = sh("ip", "link", "del", bridgeMain)
	_ = sh("ip", "link", "del", bridgeSplit)
}

func netSetup() error {
	netTeardown()
	for _, cmd := range [][]string{
		{"ip", "link", "add", bridgeMain, "type", "bridge"},
		{"ip", "addr", "add", hostAddr + "/24", "dev", bridgeMain},
		{"ip", "link", "set", bridgeMain, "up"},
		{"ip", "link", "add", bridgeSplit, "type", "bridge"},
		{"ip", "link", "set", bridgeSplit, "up"},
	} {
		if err := sh(cmd...); err != nil {
			return err
		}
	}
	return nil
}

// netAddNode creates node i's namespace and link (1-based index).
func netAddNode(i int) error {
	ns, veth := nsName(i), vethName(i)
	// Leftovers of an earlier run (a veth outlives its namespace briefly).
	_ = sh("ip", "netns", "del", ns)
	_ = sh("ip", "link", "del", veth)
	for _, cmd := range [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "link", "set", veth, "master", bridgeMain, "up"},
		{"ip", "netns", "exec", ns, "ip", "addr", "add", nsAddr(i) + "/24", "dev", "eth0"},
		{"ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up"},
		{"ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"},
	} {
		if err := sh(cmd...); err != nil {
			return err
		}
	}
	return nil
}

// netSplit cuts nodes (1-based indexes) off from the rest.
func netSplit(nodes []int) error {
	for _, i := range nodes {
		if err := sh("ip", "link", "set", vethName(i), "master", bridgeSplit); err != nil {
			return err
		}
		if err := sh("ip", "route", "replace", nsAddr(i)+"/32", "dev", bridgeSplit, "src", hostAddr); err != nil {
			return err
		}
	}
	return nil
}

// netHeal joins nodes back to the main bridge.
func netHeal(nodes []int) error {
	for _, i := range nodes {
		if err := sh("ip", "link", "set", vethName(i), "master", bridgeMain); err != nil {
			return err
		}
		_ = sh("ip", "route", "del", nsAddr(i)+"/32")
	}
	return nil
}
