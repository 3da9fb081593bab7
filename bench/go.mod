module github.com/bookingwebhook/caddy-receive-booking/bench

go 1.26.0
