package dlock

import (
	_ "github.com/gomodule/redigo/redis"
	_ "github.com/jackc/pgx/v5/stdlib"
	_ "github.com/lib/pq"
	_ "github.com/ory/dockertest/v3"
	_ "github.com/pressly/goose/v3"
	_ "go.mongodb.org/mongo-driver/v2/mongo"
	_ "go.uber.org/goleak"
)
