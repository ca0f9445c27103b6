//! A small parser and evaluator for normalised answer expressions: numbers, `+ - * / ^`,
//! implicit multiplication, `\frac`, `\sqrt`/`\sqrt[n]`, `\pi`, `i`, single-letter variables,
//! mixed numbers (`1\frac{4}{5}`) and a few functions. Values are complex f64, with an exact
//! rational alongside whenever every step stayed rational.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rational {
    pub num: i128,
    pub den: i128,
}

fn gcd(a: i128, b: i128) -> i128 {
    let (mut a, mut b) = (a.abs(), b.abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

impl Rational {
    pub fn new(num: i128, den: i128) -> Option<Rational> {
        if den == 0 {
            return None;
        }
        let g = gcd(num, den);
        let s = if den < 0 { -1 } else { 1 };
        Some(Rational { num: s * num / g, den: s * den / g })
    }
    fn add(self, o: Rational) -> Option<Rational> {
        Rational::new(
            self.num.checked_mul(o.den)?.checked_add(o.num.checked_mul(self.den)?)?,
            self.den.checked_mul(o.den)?,
        )
    }
    fn mul(self, o: Rational) -> Option<Rational> {
        Rational::new(self.num.checked_mul(o.num)?, self.den.checked_mul(o.den)?)
    }
    fn div(self, o: Rational) -> Option<Rational> {
        Rational::new(self.num.checked_mul(o.den)?, self.den.checked_mul(o.num)?)
    }
    fn neg(self) -> Rational {
        Rational { num: -self.num, den: self.den }
    }
    fn powi(self, e: i128) -> Option<Rational> {
        if !(-64..=64).contains(&e) {
            return None;
        }
        let mut r = Rational { num: 1, den: 1 };
        for _ in 0..e.abs() {
            r = r.mul(self)?;
        }
        if e < 0 { Rational { num: 1, den: 1 }.div(r) } else { Some(r) }
    }
    fn f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

#[derive(Debug, Clone, Copy)]
pub struct C {
    pub re: f64,
    pub im: f64,
}

impl C {
    fn real(x: f64) -> C {
        C { re: x, im: 0.0 }
    }
    pub fn close(self, o: C) -> bool {
        let scale = self.re.abs().max(self.im.abs()).max(o.re.abs()).max(o.im.abs()).max(1e-12);
        let d = ((self.re - o.re).powi(2) + (self.im - o.im).powi(2)).sqrt();
        d <= 1e-6 * scale || d <= 1e-9
    }
    fn mul(self, o: C) -> C {
        C { re: self.re * o.re - self.im * o.im, im: self.re * o.im + self.im * o.re }
    }
    fn div(self, o: C) -> C {
        let d = o.re * o.re + o.im * o.im;
        C { re: (self.re * o.re + self.im * o.im) / d, im: (self.im * o.re - self.re * o.im) / d }
    }
    fn pow(self, e: C) -> C {
        if self.im == 0.0 && e.im == 0.0 && (self.re >= 0.0 || e.re.fract() == 0.0) {
            return C::real(self.re.powf(e.re));
        }
        // exp(e * ln(self))
        let (r, t) = ((self.re * self.re + self.im * self.im).sqrt(), self.im.atan2(self.re));
        let (lr, lt) = (r.ln(), t);
        let (a, b) = (e.re * lr - e.im * lt, e.re * lt + e.im * lr);
        C { re: a.exp() * b.cos(), im: a.exp() * b.sin() }
    }
}

#[derive(Debug, Clone)]
pub enum Expr {
    Num(Rational),
    Float(f64),
    Pi,
    I,
    Var(char),
    Neg(Box<Expr>),
    Add(Box<Expr>, Box<Expr>),
    Mul(Box<Expr>, Box<Expr>),
    Div(Box<Expr>, Box<Expr>),
    Pow(Box<Expr>, Box<Expr>),
    Root(Box<Expr>, Box<Expr>),
    Func(&'static str, Box<Expr>),
}

impl Expr {
    pub fn vars(&self) -> Vec<char> {
        let mut v = vec![];
        self.walk(&mut |e| {
            if let Expr::Var(c) = e
                && !v.contains(c)
            {
                v.push(*c);
            }
        });
        v.sort_unstable();
        v
    }

    fn walk(&self, f: &mut impl FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Neg(a) | Expr::Func(_, a) => a.walk(f),
            Expr::Add(a, b)
            | Expr::Mul(a, b)
            | Expr::Div(a, b)
            | Expr::Pow(a, b)
            | Expr::Root(a, b) => {
                a.walk(f);
                b.walk(f);
            }
            _ => {}
        }
    }

    /// The exact value, if every step is rational.
    pub fn exact(&self) -> Option<Rational> {
        match self {
            Expr::Num(r) => Some(*r),
            Expr::Neg(a) => Some(a.exact()?.neg()),
            Expr::Add(a, b) => a.exact()?.add(b.exact()?),
            Expr::Mul(a, b) => a.exact()?.mul(b.exact()?),
            Expr::Div(a, b) => a.exact()?.div(b.exact()?),
            Expr::Pow(a, b) => {
                let e = b.exact()?;
                if e.den != 1 { None } else { a.exact()?.powi(e.num) }
            }
            _ => None,
        }
    }

    pub fn eval(&self, env: &[(char, f64)]) -> Option<C> {
        let v = match self {
            Expr::Num(r) => C::real(r.f64()),
            Expr::Float(x) => C::real(*x),
            Expr::Pi => C::real(std::f64::consts::PI),
            Expr::I => C { re: 0.0, im: 1.0 },
            Expr::Var(c) => C::real(env.iter().find(|(v, _)| v == c)?.1),
            Expr::Neg(a) => {
                let x = a.eval(env)?;
                C { re: -x.re, im: -x.im }
            }
            Expr::Add(a, b) => {
                let (x, y) = (a.eval(env)?, b.eval(env)?);
                C { re: x.re + y.re, im: x.im + y.im }
            }
            Expr::Mul(a, b) => a.eval(env)?.mul(b.eval(env)?),
            Expr::Div(a, b) => a.eval(env)?.div(b.eval(env)?),
            Expr::Pow(a, b) => a.eval(env)?.pow(b.eval(env)?),
            Expr::Root(n, x) => x.eval(env)?.pow(C::real(1.0).div(n.eval(env)?)),
            Expr::Func(f, a) => {
                let x = a.eval(env)?;
                if x.im != 0.0 {
                    return None;
                }
                let r = x.re;
                C::real(match *f {
                    "sin" => r.sin(),
                    "cos" => r.cos(),
                    "tan" => r.tan(),
                    "cot" => 1.0 / r.tan(),
                    "sec" => 1.0 / r.cos(),
                    "csc" => 1.0 / r.sin(),
                    "ln" => r.ln(),
                    "log" => r.log10(),
                    "exp" => r.exp(),
                    _ => return None,
                })
            }
        };
        (v.re.is_finite() && v.im.is_finite()).then_some(v)
    }
}

pub(crate) fn parse(s: &str) -> Result<Expr, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut p = Parser { c: chars, i: 0, depth: 0 };
    let e = p.expr()?;
    if p.i != p.c.len() {
        return Err(format!("unexpected '{}'", p.c[p.i..].iter().collect::<String>()));
    }
    Ok(e)
}

struct Parser {
    c: Vec<char>,
    i: usize,
    /// Nesting of the recursive descent; deeper input is refused, not a stack overflow.
    depth: usize,
}

/// Deepest nesting parsed (`((((…))))`, `----1`, `\\frac{\\frac{…}}`).
const MAX_DEPTH: usize = 200;

const FUNCS: [&str; 9] = ["sin", "cos", "tan", "cot", "sec", "csc", "ln", "log", "exp"];

impl Parser {
    fn peek(&self) -> Option<char> {
        self.c.get(self.i).copied()
    }
    fn eat(&mut self, ch: char) -> bool {
        if self.peek() == Some(ch) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    /// The command at the cursor. Spaces were normalised away, so `\cot x` arrives as `\cotx`:
    /// a known command name that prefixes the letters wins.
    fn command(&self) -> Option<String> {
        if self.peek() != Some('\\') {
            return None;
        }
        let name: String =
            self.c[self.i + 1..].iter().take_while(|c| c.is_ascii_alphabetic()).collect();
        let known = ["frac", "sqrt", "pi"]
            .iter()
            .chain(FUNCS.iter())
            .filter(|k| name.starts_with(*k))
            .max_by_key(|k| k.len());
        match known {
            Some(k) => Some(k.to_string()),
            None => (!name.is_empty()).then_some(name),
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        let r = if self.depth > MAX_DEPTH { Err("nested too deeply".into()) } else { self.sum() };
        self.depth -= 1;
        r
    }

    fn sum(&mut self) -> Result<Expr, String> {
        let mut e = self.term()?;
        loop {
            if self.eat('+') {
                e = Expr::Add(Box::new(e), Box::new(self.term()?));
            } else if self.eat('-') {
                e = Expr::Add(Box::new(e), Box::new(Expr::Neg(Box::new(self.term()?))));
            } else {
                return Ok(e);
            }
        }
    }

    fn starts_atom(&self) -> bool {
        match self.peek() {
            Some(c) if c.is_ascii_alphanumeric() || c == '(' || c == '{' || c == '.' => true,
            Some('\\') => self.command().is_some_and(|c| {
                c == "frac" || c == "sqrt" || c == "pi" || FUNCS.contains(&c.as_str())
            }),
            _ => false,
        }
    }

    fn term(&mut self) -> Result<Expr, String> {
        let mut e = self.unary()?;
        loop {
            if self.eat('*') {
                e = Expr::Mul(Box::new(e), Box::new(self.unary()?));
            } else if self.eat('/') {
                e = Expr::Div(Box::new(e), Box::new(self.unary()?));
            } else if self.starts_atom() {
                // A mixed number: an integer directly followed by \frac.
                let mixed = matches!(e, Expr::Num(r) if r.den == 1)
                    && self.command().as_deref() == Some("frac");
                let rhs = self.power()?;
                e = if mixed {
                    Expr::Add(Box::new(e), Box::new(rhs))
                } else {
                    Expr::Mul(Box::new(e), Box::new(rhs))
                };
            } else {
                return Ok(e);
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        let r =
            if self.depth > MAX_DEPTH { Err("nested too deeply".into()) } else { self.signed() };
        self.depth -= 1;
        r
    }

    fn signed(&mut self) -> Result<Expr, String> {
        if self.eat('-') {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        if self.eat('+') {
            return self.unary();
        }
        self.power()
    }

    fn power(&mut self) -> Result<Expr, String> {
        let base = self.atom()?;
        if self.eat('^') {
            let exp = self.small()?;
            return Ok(Expr::Pow(Box::new(base), Box::new(exp)));
        }
        Ok(base)
    }

    /// A group `{…}` or a single character token (as in `\frac12`, `x^2`).
    fn small(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        let r = if self.depth > MAX_DEPTH { Err("nested too deeply".into()) } else { self.token() };
        self.depth -= 1;
        r
    }

    fn token(&mut self) -> Result<Expr, String> {
        if self.eat('{') {
            let e = self.expr()?;
            return if self.eat('}') { Ok(e) } else { Err("missing }".into()) };
        }
        if self.eat('-') {
            return Ok(Expr::Neg(Box::new(self.small()?)));
        }
        match self.peek() {
            Some(c) if c.is_ascii_digit() => {
                self.i += 1;
                Ok(Expr::Num(Rational::new(c.to_digit(10).unwrap() as i128, 1).unwrap()))
            }
            _ => self.atom(),
        }
    }

    fn atom(&mut self) -> Result<Expr, String> {
        match self.peek() {
            None => Err("unexpected end".into()),
            Some('(') | Some('{') | Some('[') => {
                let close = match self.peek() {
                    Some('(') => ')',
                    Some('{') => '}',
                    _ => ']',
                };
                self.i += 1;
                let e = self.expr()?;
                if self.eat(close) { Ok(e) } else { Err(format!("missing {close}")) }
            }
            Some(c) if c.is_ascii_digit() || c == '.' => self.number(),
            Some('\\') => {
                let name = self.command().ok_or("bad command")?;
                self.i += 1 + name.len();
                match name.as_str() {
                    "frac" => {
                        let (n, d) = (self.small()?, self.small()?);
                        Ok(Expr::Div(Box::new(n), Box::new(d)))
                    }
                    "sqrt" => {
                        let index = if self.eat('[') {
                            let e = self.expr()?;
                            if !self.eat(']') {
                                return Err("missing ]".into());
                            }
                            e
                        } else {
                            Expr::Num(Rational { num: 2, den: 1 })
                        };
                        Ok(Expr::Root(Box::new(index), Box::new(self.small()?)))
                    }
                    "pi" => Ok(Expr::Pi),
                    f => match FUNCS.iter().find(|&&x| x == f) {
                        // `\tan^2(y)` is `(\tan y)^2`.
                        Some(&fname) if self.peek() == Some('^') => {
                            self.i += 1;
                            let e = self.small()?;
                            let arg = self.power()?;
                            Ok(Expr::Pow(Box::new(Expr::Func(fname, Box::new(arg))), Box::new(e)))
                        }
                        Some(&fname) => Ok(Expr::Func(fname, Box::new(self.power()?))),
                        None => Err(format!("unsupported \\{f}")),
                    },
                }
            }
            Some('i') if !self.c.get(self.i + 1).is_some_and(|c| c.is_ascii_alphabetic()) => {
                self.i += 1;
                Ok(Expr::I)
            }
            Some(c) if c.is_ascii_alphabetic() => {
                self.i += 1;
                Ok(Expr::Var(c))
            }
            Some(c) => Err(format!("unexpected '{c}'")),
        }
    }

    fn number(&mut self) -> Result<Expr, String> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
            self.i += 1;
        }
        // Scientific notation: 1.5e3, 2e-4.
        if self.peek() == Some('e')
            && self.c.get(self.i + 1).is_some_and(|c| c.is_ascii_digit() || *c == '-' || *c == '+')
        {
            let save = self.i;
            self.i += 1;
            if self.peek() == Some('-') || self.peek() == Some('+') {
                self.i += 1;
            }
            if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.i += 1;
                }
            } else {
                self.i = save;
            }
        }
        let text: String = self.c[start..self.i].iter().collect();
        if let Some((mant, exp)) = text.split_once('e') {
            let (m, e): (f64, i32) =
                (mant.parse().map_err(|_| "bad number")?, exp.parse().map_err(|_| "bad exponent")?);
            return Ok(decimal(mant)
                .and_then(|r| r.mul(Rational { num: 10, den: 1 }.powi(e as i128)?))
                .map_or(Expr::Float(m * 10f64.powi(e)), Expr::Num));
        }
        decimal(&text).map(Expr::Num).ok_or_else(|| format!("bad number '{text}'"))
    }
}

/// "12.50" → 25/2 exactly.
fn decimal(t: &str) -> Option<Rational> {
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 30 || int.len() > 30
    {
        return None;
    }
    let digits = format!("{int}{frac}");
    let num: i128 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
    Rational::new(num, 10i128.checked_pow(frac.len() as u32)?)
}
