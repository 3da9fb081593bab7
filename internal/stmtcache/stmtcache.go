// Package stmtcache keeps each database connection's prepared statements by
// their SQL text, so that a statement run again is neither parsed nor
// planned again.
//
// database/sql prepares a statement for every Exec and Query that is not
// run through a *sql.Stmt; River's drivers and the queue's own code run
// the same few dozen statements over and over, and on the embedded SQLite
// (a C library translated to Go) parsing them was the largest cost of a
// webhook's record and a sync's bookkeeping. The cache sits between
// database/sql and the driver, so every caller benefits without change.
//
// SQLite also compiles the value bound to a LIMIT into the statement's
// plan, and recompiles the statement whenever that value changes (River's
// fetch binds the number of idle workers there, so nearly every fetch was
// a fresh compile); a statement with a parameter in its LIMIT is cached
// once per value.
//
// database/sql uses a connection from one goroutine at a time (it holds
// the connection's lock around every call, Rows.Close included), so a
// connection's cache needs no lock of its own.
package stmtcache

import (
	"container/list"
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// Connector wraps base so that every connection it opens keeps up to size
// prepared statements, the least recently used one going first.
func Connector(base driver.Connector, size int) driver.Connector {
	return &connector{base: base, size: max(size, 1)}
}

type connector struct {
	base driver.Connector
	size int
}

func (c *connector) Connect(ctx context.Context) (driver.Conn, error) {
	dc, err := c.base.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return newConn(dc, c.size)
}

func (c *connector) Driver() driver.Driver { return c.base.Driver() }

// inner is what the cache needs of a driver's connection; SQLite's and
// most modern drivers' connections have all of it.
type inner interface {
	driver.Conn
	driver.ConnBeginTx
	driver.ConnPrepareContext
	driver.ExecerContext
	driver.QueryerContext
}

var errUnsupported = errors.New("stmtcache: the driver's connection lacks BeginTx, PrepareContext, ExecContext or QueryContext")

func newConn(dc driver.Conn, size int) (driver.Conn, error) {
	in, ok := dc.(inner)
	if !ok {
		_ = dc.Close()
		return nil, errUnsupported
	}
	return &conn{in: in, size: size, byQuery: make(map[string]*list.Element, size), lru: list.New()}, nil
}

// conn is one connection with its statements.
type conn struct {
	in      inner
	size    int
	byQuery map[string]*list.Element // of *entry, by key
	lru     *list.List               // most recently used first
}

// entry is one prepared statement. busy is set while rows read from it
// are open: the statement cannot run again until they close, so a query
// arriving meanwhile is run uncached.
type entry struct {
	key     string
	stmt    driver.Stmt
	busy    bool
	evicted bool // closed once its rows close
}

// Unwrap returns the driver's own connection.
func (c *conn) Unwrap() driver.Conn { return c.in }

// limitParams are the ordinals of the parameters a query's LIMITs take
// (?N or $N, or the n-th plain ?). Queries are few and repeat: memoised.
var limitCache sync.Map // query -> []int

var limitRE = regexp.MustCompile(`(?i)\bLIMIT\s+[?$](\d*)`)

func limitParams(query string) []int {
	if n, ok := limitCache.Load(query); ok {
		return n.([]int)
	}
	var out []int
	for _, m := range limitRE.FindAllStringSubmatchIndex(query, -1) {
		if m[3] > m[2] {
			n, _ := strconv.Atoi(query[m[2]:m[3]])
			out = append(out, n)
		} else {
			// A plain ?: its ordinal counts the ?s before it (none of
			// River's or our statements has one inside a string literal).
			out = append(out, strings.Count(query[:m[0]], "?")+1)
		}
	}
	limitCache.Store(query, out)
	return out
}

// key is the cache key of a run of query with args: the query, and the
// values bound to its LIMITs.
func key(query string, args []driver.NamedValue) string {
	ns := limitParams(query)
	if len(ns) == 0 {
		return query
	}
	k := []byte(query)
	for _, n := range ns {
		for _, a := range args {
			if a.Ordinal == n && a.Name == "" {
				k = append(k, 0)
				k = fmt.Append(k, a.Value)
			}
		}
	}
	return string(k)
}

// get returns the cached statement for query, preparing it on first use,
// or nil when it is busy.
func (c *conn) get(ctx context.Context, query string, args []driver.NamedValue) (*entry, error) {
	k := key(query, args)
	if el, ok := c.byQuery[k]; ok {
		e := el.Value.(*entry)
		if e.busy {
			return nil, nil
		}
		c.lru.MoveToFront(el)
		return e, nil
	}
	st, err := c.in.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	e := &entry{key: k, stmt: st}
	c.byQuery[k] = c.lru.PushFront(e)
	for c.lru.Len() > c.size {
		c.evict(c.lru.Back())
	}
	return e, nil
}

func (c *conn) evict(el *list.Element) {
	e := el.Value.(*entry)
	c.lru.Remove(el)
	delete(c.byQuery, e.key)
	if e.busy {
		e.evicted = true
		return
	}
	_ = e.stmt.Close()
}

// release marks e free again once its rows are closed.
func (e *entry) release() {
	e.busy = false
	if e.evicted {
		_ = e.stmt.Close()
	}
}

func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	e, err := c.get(ctx, query, args)
	if err != nil {
		return nil, err
	}
	if e == nil {
		return c.in.ExecContext(ctx, query, args)
	}
	se, ok := e.stmt.(driver.StmtExecContext)
	if !ok {
		return c.in.ExecContext(ctx, query, args)
	}
	return se.ExecContext(ctx, args)
}

func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	e, err := c.get(ctx, query, args)
	if err != nil {
		return nil, err
	}
	if e == nil {
		return c.in.QueryContext(ctx, query, args)
	}
	sq, ok := e.stmt.(driver.StmtQueryContext)
	if !ok {
		return c.in.QueryContext(ctx, query, args)
	}
	e.busy = true
	r, err := sq.QueryContext(ctx, args)
	if err != nil {
		e.release()
		return nil, err
	}
	return &rows{Rows: r, e: e}, nil
}

// Prepare and PrepareContext hand out the driver's own statements: the
// caller owns and closes them (database/sql caches *sql.Stmt itself).
func (c *conn) Prepare(query string) (driver.Stmt, error) { return c.in.Prepare(query) }

func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return c.in.PrepareContext(ctx, query)
}

func (c *conn) Begin() (driver.Tx, error) {
	return c.in.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return c.in.BeginTx(ctx, opts)
}

// Close closes every cached statement, then the connection.
func (c *conn) Close() error {
	for el := c.lru.Front(); el != nil; el = el.Next() {
		e := el.Value.(*entry)
		if !e.busy {
			_ = e.stmt.Close()
		}
	}
	c.lru.Init()
	clear(c.byQuery)
	return c.in.Close()
}

func (c *conn) Ping(ctx context.Context) error {
	if p, ok := c.in.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

func (c *conn) ResetSession(ctx context.Context) error {
	if r, ok := c.in.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *conn) IsValid() bool {
	if v, ok := c.in.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

func (c *conn) CheckNamedValue(nv *driver.NamedValue) error {
	if ch, ok := c.in.(driver.NamedValueChecker); ok {
		return ch.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

// rows frees its statement for the next run when closed.
type rows struct {
	driver.Rows
	e *entry
}

func (r *rows) Close() error {
	err := r.Rows.Close()
	if r.e != nil {
		r.e.release()
		r.e = nil
	}
	return err
}

// The column-type and result-set methods are passed on where the driver's
// rows have them.

func (r *rows) ColumnTypeDatabaseTypeName(i int) string {
	if t, ok := r.Rows.(driver.RowsColumnTypeDatabaseTypeName); ok {
		return t.ColumnTypeDatabaseTypeName(i)
	}
	return ""
}

func (r *rows) ColumnTypeScanType(i int) reflect.Type {
	if t, ok := r.Rows.(driver.RowsColumnTypeScanType); ok {
		return t.ColumnTypeScanType(i)
	}
	return reflect.TypeFor[any]()
}

func (r *rows) ColumnTypeNullable(i int) (nullable, ok bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypeNullable); ok {
		return t.ColumnTypeNullable(i)
	}
	return false, false
}

func (r *rows) ColumnTypeLength(i int) (length int64, ok bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypeLength); ok {
		return t.ColumnTypeLength(i)
	}
	return 0, false
}

func (r *rows) ColumnTypePrecisionScale(i int) (precision, scale int64, ok bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypePrecisionScale); ok {
		return t.ColumnTypePrecisionScale(i)
	}
	return 0, 0, false
}

func (r *rows) HasNextResultSet() bool {
	if n, ok := r.Rows.(driver.RowsNextResultSet); ok {
		return n.HasNextResultSet()
	}
	return false
}

func (r *rows) NextResultSet() error {
	if n, ok := r.Rows.(driver.RowsNextResultSet); ok {
		return n.NextResultSet()
	}
	return io.EOF
}
