//! Hugo (Debian's 0.111.3, Go 1.19.6, stripped; `scripts/setup.sh` installs it) as a
//! third-party program to trace: where it is, and a generated site for it to build.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;

/// The `hugo` on PATH, if any.
pub fn hugo() -> Option<PathBuf> {
    crate::find_on_path("hugo")
}

/// A site of `pages` pages: front matter, headings, lists, links, emphasis, code and
/// varying text, so hugo's parsers, markdown renderer and templates do the work.
pub fn write_site(dir: &Path, pages: usize) -> Result<()> {
    let layouts = dir.join("layouts/_default");
    let posts = dir.join("content/posts");
    std::fs::create_dir_all(&layouts)?;
    std::fs::create_dir_all(&posts)?;
    std::fs::write(
        dir.join("config.toml"),
        "baseURL = \"http://example.org/\"\ntitle = \"gomemtrace\"\ndisableKinds = [\"RSS\", \"sitemap\"]\n",
    )?;
    std::fs::write(
        layouts.join("single.html"),
        "<html><body><h1>{{ .Title }}</h1>{{ .Content }}<p>{{ .WordCount }} words</p>\
         {{ range .Params.tags }}<span>{{ . }}</span>{{ end }}</body></html>\n",
    )?;
    std::fs::write(
        layouts.join("list.html"),
        "<html><body><h1>{{ .Title }}</h1><ul>{{ range .Pages }}\
         <li><a href=\"{{ .RelPermalink }}\">{{ .Title }}</a> {{ .Summary }}</li>{{ end }}</ul></body></html>\n",
    )?;
    const WORDS: [&str; 12] = [
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
        "heap",
        "profile",
        "sample",
        "goroutine",
        "stack",
        "frame",
        "runtime",
    ];
    for i in 0..pages {
        let mut page = format!(
            "---\ntitle: \"Post {i}\"\ndate: 2023-01-{:02}\ntags: [\"t{}\", \"all\"]\n---\n\n",
            i % 28 + 1,
            i % 20
        );
        for p in 0..8 {
            let _ = write!(
                page,
                "## Section {p}\n\nSome *text* with **markdown**, `code` and a [link](http://example.org/{i}/{p})."
            );
            for w in 0..(40 + (i * 7 + p) % 40) {
                let _ = write!(page, " {}", WORDS[(i + w * p + w) % WORDS.len()]);
            }
            page.push_str(".\n\n- one\n- two\n\n");
        }
        std::fs::write(posts.join(format!("p{i}.md")), page)?;
    }
    Ok(())
}
