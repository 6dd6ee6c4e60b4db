package torture

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gomodule/redigo/redis"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/dlock-go/dlock/drivers/mongolocker"
	"github.com/dlock-go/dlock/internal/faultproxy"
	"github.com/dlock-go/dlock/internal/storage"
	"github.com/dlock-go/dlock/migrations"
)

// backend is the storage under torture, reached through fault proxies.
type backend struct {
	urls    []string // direct
	proxied []string // through proxies, as the workers use them
	proxies []*faultproxy.Proxy
	opts    storage.Options
	group   *redisGroup // the private Redlock group
	unsafe  string      // why the server cannot exclude nor fence (FerretDB), or ""
	cleanup []func()
}

// withHost returns rawURL with its host:port replaced by addr and the
// given query parameters set.
func withHost(rawURL, addr string, params map[string]string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("malformed URL %s", storage.Redact(rawURL))
	}
	if addr != "" {
		u.Host = addr
	}
	q := u.Query()
	for k, v := range params {
		q.Set(k, v)
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func hostPort(rawURL, defPort string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("malformed URL %s", storage.Redact(rawURL))
	}
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), defPort), nil
	}
	return u.Host, nil
}

// setUpBackend prepares the namespace of the run on the chosen storage and
// the proxies in front of it.
func (r *runner) setUpBackend(ctx context.Context) (*backend, error) {
	b := &backend{}
	cfg := r.cfg
	var defPort string
	var params map[string]string
	switch cfg.Backend {
	case BackendPostgres:
		table := r.schema + ".locks"
		if err := migrations.Up(ctx, r.admin, migrations.Table(table)); err != nil {
			return nil, fmt.Errorf("migrate the lock table: %w", err)
		}
		b.urls, b.opts.Table, defPort = []string{cfg.PostgresURL}, table, "5432"
		params = map[string]string{"application_name": r.lockApp}
	case BackendRedis:
		b.urls, b.opts.Prefix, defPort = []string{cfg.RedisURL}, "dlock-torture-"+r.id, "6379"
		b.cleanup = append(b.cleanup, func() {
			if err := cleanRedisPrefix(cfg.RedisURL, b.opts.Prefix); err != nil {
				r.logf("clean redis prefix: %v", err)
			}
		})
	case BackendRedlock:
		g, err := startRedisGroup(cfg.RedlockNodes, cfg.RedlockPersist)
		if err != nil {
			return nil, err
		}
		b.group = g
		b.cleanup = append(b.cleanup, g.stop)
		b.urls, b.opts.Prefix, defPort = g.urls(), "dlock-torture-"+r.id, "6379"
	case BackendMongo:
		u, err := url.Parse(cfg.MongoURL)
		if err != nil {
			return nil, fmt.Errorf("malformed mongo URL %s", storage.Redact(cfg.MongoURL))
		}
		if strings.Trim(u.Path, "/") == "" {
			u.Path = "/dlock_torture"
		}
		b.urls, b.opts.Collection, defPort = []string{u.String()}, "torture_"+r.id, "27017"
		direct, db := u.String(), strings.Trim(u.Path, "/")
		b.cleanup = append(b.cleanup, func() {
			if err := dropMongo(direct, db, b.opts.Collection); err != nil {
				r.logf("drop mongo collections: %v", err)
			}
		})
		// The proxy's address is not the server's own idea of its name.
		params = map[string]string{"directConnection": "true"}
	}
	for _, u := range b.urls {
		target, err := hostPort(u, defPort)
		if err != nil {
			return nil, err
		}
		p, err := faultproxy.Listen(target)
		if err != nil {
			return nil, err
		}
		b.proxies = append(b.proxies, p)
		pu, err := withHost(u, p.Addr(), params)
		if err != nil {
			return nil, err
		}
		b.proxied = append(b.proxied, pu)
	}
	// Check the configuration once here, rather than in every worker.
	l, closeLocker, err := storage.Open(ctx, b.proxied, b.opts)
	if err != nil {
		return nil, err
	}
	defer closeLocker()
	if _, err := l.Inspect(ctx, "torture-probe"); err != nil {
		return nil, fmt.Errorf("%s storage does not answer: %w", cfg.Backend, err)
	}
	if f, ok := l.(interface {
		ServerIsFerretDB(context.Context) (bool, error)
	}); ok {
		ferret, err := f.ServerIsFerretDB(ctx)
		if err != nil {
			return nil, err
		}
		if ferret {
			b.unsafe = "the MongoDB server is FerretDB 1.x, which reads then writes without a re-check: several clients can win the takeover of one expired lease, and token counters are not incremented atomically (documented in drivers/mongolocker)"
		}
	}
	return b, nil
}

func (b *backend) close() {
	for _, p := range b.proxies {
		p.Close()
	}
	for i := len(b.cleanup) - 1; i >= 0; i-- {
		b.cleanup[i]()
	}
}

// cleanRedisPrefix deletes every key under prefix on the server at rawURL.
func cleanRedisPrefix(rawURL, prefix string) error {
	c, err := redis.DialURL(rawURL, redis.DialConnectTimeout(2*time.Second), redis.DialReadTimeout(10*time.Second))
	if err != nil {
		return err
	}
	defer c.Close()
	cursor := "0"
	for {
		vs, err := redis.Values(c.Do("SCAN", cursor, "MATCH", prefix+":*", "COUNT", 1000))
		if err != nil {
			return err
		}
		keys, _ := redis.Strings(vs[1], nil)
		for _, k := range keys {
			if _, err := c.Do("UNLINK", k); err != nil {
				return err
			}
		}
		if cursor, _ = redis.String(vs[0], nil); cursor == "0" {
			return nil
		}
	}
}

// dropMongo drops a lock collection and its token counters.
func dropMongo(rawURL, db, coll string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := mongo.Connect(options.Client().ApplyURI(rawURL))
	if err != nil {
		return err
	}
	defer c.Disconnect(ctx)
	d := c.Database(db)
	return errors.Join(d.Collection(coll).Drop(ctx), d.Collection(coll+mongolocker.TokensSuffix).Drop(ctx))
}

// redisGroup is the private Redlock group of independent redis-server
// processes that the run starts, kills and restarts.
type redisGroup struct {
	dir     string
	persist bool
	nodes   []*redisNode
}

type redisNode struct {
	port int
	dir  string
	mu   sync.Mutex
	cmd  *exec.Cmd
}

func startRedisGroup(n int, persist bool) (*redisGroup, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, fmt.Errorf("the redlock backend starts its own redis-server processes: %w", err)
	}
	dir, err := os.MkdirTemp("", "dlock-torture-redis-")
	if err != nil {
		return nil, err
	}
	g := &redisGroup{dir: dir, persist: persist}
	for i := range n {
		port, err := freePort()
		if err != nil {
			g.stop()
			return nil, err
		}
		nd := &redisNode{port: port, dir: filepath.Join(dir, strconv.Itoa(i))}
		if err := os.MkdirAll(nd.dir, 0o700); err != nil {
			g.stop()
			return nil, err
		}
		g.nodes = append(g.nodes, nd)
		if err := g.start(nd); err != nil {
			g.stop()
			return nil, err
		}
	}
	return g, nil
}

func (g *redisGroup) urls() []string {
	var out []string
	for _, nd := range g.nodes {
		out = append(out, fmt.Sprintf("redis://127.0.0.1:%d", nd.port))
	}
	return out
}

// start (re)starts a node and waits until it answers PING.
func (g *redisGroup) start(nd *redisNode) error {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd != nil {
		return nil
	}
	args := []string{"--port", strconv.Itoa(nd.port), "--bind", "127.0.0.1", "--dir", nd.dir,
		"--daemonize", "no", "--loglevel", "warning", "--save", ""}
	if g.persist {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	cmd := exec.Command("redis-server", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	nd.cmd = cmd
	url := fmt.Sprintf("redis://127.0.0.1:%d", nd.port)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := redis.DialURL(url, redis.DialConnectTimeout(200*time.Millisecond), redis.DialReadTimeout(time.Second))
		if err == nil {
			_, err = c.Do("PING") // a node loading its AOF answers LOADING
			c.Close()
			if err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on port %d does not answer: %w", nd.port, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill stops a node with SIGKILL: whatever it did not persist is lost.
func (g *redisGroup) kill(nd *redisNode) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd == nil {
		return
	}
	_ = nd.cmd.Process.Kill()
	_ = nd.cmd.Wait()
	nd.cmd = nil
}

func (g *redisGroup) stop() {
	for _, nd := range g.nodes {
		g.kill(nd)
	}
	os.RemoveAll(g.dir)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// openAdmin opens the coordinator's own connection pool to PostgreSQL and
// waits until the server answers.
func openAdmin(ctx context.Context, rawURL, app string) (*sql.DB, error) {
	u, err := withHost(rawURL, "", map[string]string{"application_name": app})
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("postgres", u)
	if err != nil {
		return nil, err
	}
	if err := waitPG(ctx, db, 30*time.Second); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// waitPG pings db until it answers or timeout passes.
func waitPG(ctx context.Context, db *sql.DB, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := db.PingContext(pctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("postgres does not answer: %w", errors.Join(err, ctx.Err()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
