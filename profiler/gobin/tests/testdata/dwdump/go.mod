module dwdump

go 1.19
