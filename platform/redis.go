package platform

import (
	"strings"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/config"
)

// redisOptions turns the configured address (host:port or unix:///path)
// into go-redis options; asynq gets the same connection settings.
func redisOptions(c config.Config) *redis.Options {
	o := &redis.Options{Addr: c.Redis, Password: c.RedisPassword, DB: c.RedisDB}
	if p, ok := strings.CutPrefix(c.Redis, "unix://"); ok {
		o.Network, o.Addr = "unix", p
	}
	return o
}

func asynqRedis(c config.Config) asynq.RedisClientOpt {
	o := redisOptions(c)
	return asynq.RedisClientOpt{Network: o.Network, Addr: o.Addr, Password: o.Password, DB: o.DB}
}
