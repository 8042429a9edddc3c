// The etcd peer of leader-bench-candidate: one candidate of an etcd election
// (clientv3/concurrency.Election over a Session with a settable TTL), in a
// process of its own, speaking the same line protocol, so that
// leader-bench-e2e times both the same way.
//
// stdout, one line per event, stamped with CLOCK_MONOTONIC ns:
//
//	ready <ns>                   the session exists and the campaign started
//	promoted <ns> term=<rev>     Campaign returned: this candidate leads
//	leader <ns> id=<id|none>     Observe saw another leader value
//	renewed <ns> acked=<ns>      a lease keep-alive was answered; the stock
//	                             client does not expose the send time, so the
//	                             answer's arrival stands for it
//	stop_called <ns>             right before Resign
//	stopped <ns>                 Resign returned
//	started <ns>                 a new campaign started
//	error <ns> msg=<text>
//
// stdin: `stop`, `start`, `quit` (EOF is a quit).
//
// Built offline by scripts/bench.sh against Debian's golang-etcd-server-dev:
// GO111MODULE=off GOPATH=<dir>:/usr/share/gocode go build.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
	"golang.org/x/sys/unix"
)

var outMu sync.Mutex

func monoNs() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return ts.Nano()
}

func line(event string, ns int64, fields string) {
	outMu.Lock()
	defer outMu.Unlock()
	if fields == "" {
		fmt.Fprintf(os.Stdout, "%s %d\n", event, ns)
	} else {
		fmt.Fprintf(os.Stdout, "%s %d %s\n", event, ns, fields)
	}
}

// observedLease is the client's Lease with every keep-alive answer reported.
// The session still uses the stock keep-alive loop; this only watches it.
type observedLease struct {
	clientv3.Lease
}

func (l *observedLease) KeepAlive(ctx context.Context, id clientv3.LeaseID) (<-chan *clientv3.LeaseKeepAliveResponse, error) {
	in, err := l.Lease.KeepAlive(ctx, id)
	if err != nil {
		return in, err
	}
	out := make(chan *clientv3.LeaseKeepAliveResponse, 16)
	go func() {
		defer close(out)
		for resp := range in {
			now := monoNs()
			line("renewed", now, fmt.Sprintf("acked=%d", now))
			select {
			case out <- resp:
			default: // as the stock client: a slow reader loses answers, not the lease
			}
		}
	}()
	return out, nil
}

type candidate struct {
	id       string
	election *concurrency.Election
	mu       sync.Mutex
	cancel   context.CancelFunc // of the running campaign, nil if none
}

// campaign runs one Campaign in the background; it returns when elected.
func (c *candidate) campaign() {
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	c.cancel = cancel
	c.mu.Unlock()
	go func() {
		if err := c.election.Campaign(ctx, c.id); err != nil {
			if ctx.Err() == nil {
				line("error", monoNs(), "msg=campaign: "+err.Error())
			}
			return
		}
		line("promoted", monoNs(), fmt.Sprintf("term=%d", c.election.Rev()))
	}()
}

func (c *candidate) stop() {
	line("stop_called", monoNs(), "")
	c.mu.Lock()
	cancel := c.cancel
	c.cancel = nil
	c.mu.Unlock()
	if err := c.election.Resign(context.Background()); err != nil {
		line("error", monoNs(), "msg=resign: "+err.Error())
	}
	if cancel != nil {
		cancel()
	}
	line("stopped", monoNs(), "")
}

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "etcd endpoints, comma-separated")
	prefix := flag.String("prefix", "/bench/election", "the election's key prefix")
	id := flag.String("id", "", "this candidate's id (its election value)")
	ttl := flag.Int("ttl", 1, "session (lease) TTL in seconds")
	flag.Parse()
	if *id == "" {
		fmt.Fprintln(os.Stderr, "election: --id is required")
		os.Exit(2)
	}

	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(*endpoints, ","), DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, "election: connect:", err)
		os.Exit(1)
	}
	defer cli.Close()
	cli.Lease = &observedLease{Lease: cli.Lease}
	session, err := concurrency.NewSession(cli, concurrency.WithTTL(*ttl))
	if err != nil {
		fmt.Fprintln(os.Stderr, "election: session:", err)
		os.Exit(1)
	}
	c := &candidate{id: *id, election: concurrency.NewElection(session, *prefix)}

	go func() {
		last := ""
		for resp := range c.election.Observe(context.Background()) {
			who := "none"
			if len(resp.Kvs) > 0 {
				who = string(resp.Kvs[0].Value)
			}
			if who != last {
				last = who
				line("leader", monoNs(), "id="+who)
			}
		}
	}()

	c.campaign()
	line("ready", monoNs(), "")
	scanner := bufio.NewScanner(os.Stdin)
	for scanner.Scan() {
		switch scanner.Text() {
		case "stop":
			c.stop()
		case "start":
			c.campaign()
			line("started", monoNs(), "")
		case "quit":
			c.stop()
			return
		default:
			line("error", monoNs(), "msg=unknown command "+scanner.Text())
		}
	}
	c.stop()
}
